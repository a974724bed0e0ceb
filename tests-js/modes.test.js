'use strict'
const burrow = require('..')
const { pki, echoServer, tlsConnect, echoExact, portOf, hostOf, random } = require('./helpers')

let edge
let certs
const servers = []
beforeAll(async () => { edge = await burrow.Edge.start({ open: true }); certs = pki() })
afterEach(async () => { await burrow.kill(); while (servers.length) servers.pop().close() })
afterAll(async () => { await edge.close() })

async function serve (cert) { const s = await echoServer(cert); servers.push(s); return s.address().port }

test('upstream mode: the client sees the service certificate', async () => {
  const cert = certs.leaf('app.up.test')
  const port = await serve(cert)
  const l = await burrow.forward({ addr: port, proto: 'tls', domain: 'app.up.test', ...edge.options() })
  expect(l.terminateAt()).toBe('upstream')
  const s = await tlsConnect(portOf(l.url()), 'app.up.test', certs.ca)
  expect(s.getPeerX509Certificate().toString()).toBe(new (require('crypto').X509Certificate)(cert.crt).toString())
  await echoExact(s, random(3 * 1024 * 1024))
})

test('agent mode with crt/key', async () => {
  const cert = certs.leaf('app.agent.test')
  const port = await serve()
  const l = await burrow.forward({ proto: 'tls', addr: port, domain: 'app.agent.test', crt: cert.crt, key: Buffer.from(cert.key), terminate_at: 'agent', ...edge.options() })
  expect(l.terminateAt()).toBe('agent')
  const s = await tlsConnect(portOf(l.url()), 'app.agent.test', certs.ca)
  expect(s.getPeerX509Certificate().subject).toContain('app.agent.test')
  await echoExact(s, random(3 * 1024 * 1024))
})

test('edge mode with cert bytes and with an automatic certificate', async () => {
  const cert = certs.leaf('app.edge.test')
  const port = await serve()
  const l = await burrow.forward({ proto: 'tls', addr: String(port), domain: 'app.edge.test', crt: new Uint8Array(Buffer.from(cert.crt)), key: cert.key, ...edge.options() })
  expect(l.terminateAt()).toBe('edge')
  const s = await tlsConnect(portOf(l.url()), 'app.edge.test', certs.ca)
  await echoExact(s, random(3 * 1024 * 1024))
  const auto = await burrow.forward({ proto: 'tls', addr: `127.0.0.1:${port}`, terminate_at: 'edge', ...edge.options() })
  const s2 = await tlsConnect(portOf(auto.url()), hostOf(auto.url()), edge.caPem)
  await echoExact(s2, random(1024 * 1024))
})

test('the event loop keeps running during a large transfer', async () => {
  const port = await serve()
  const l = await burrow.forward({ proto: 'tls', addr: port, terminate_at: 'edge', ...edge.options() })
  let ticks = 0
  const timer = setInterval(() => { ticks += 1 }, 5)
  const s = await tlsConnect(portOf(l.url()), hostOf(l.url()), edge.caPem)
  await echoExact(s, random(8 * 1024 * 1024))
  clearInterval(timer)
  expect(ticks).toBeGreaterThan(3)
})

test('mutual TLS, PROXY v2 and traffic policy', async () => {
  const clients = pki()
  const port = await serve()
  const m = await burrow.forward({ proto: 'tls', addr: port, domain: 'm.js.test', terminate_at: 'edge', mutual_tls_cas: clients.ca, ...edge.options() })
  const alice = clients.client('alice')
  const ok = await tlsConnect(portOf(m.url()), 'm.js.test', edge.caPem, { cert: alice.crt, key: alice.key })
  await echoExact(ok, Buffer.from('with a certificate'))
  const refused = await new Promise((resolve) => {
    const s = require('tls').connect({ host: '127.0.0.1', port: portOf(m.url()), servername: 'm.js.test', ca: edge.caPem }, () => { s.write('x') })
    s.on('error', () => resolve(true))
    s.on('close', () => resolve(true))
    s.on('data', () => resolve(false))
  })
  expect(refused).toBe(true)

  const seen = []
  const pp = require('net').createServer((c) => {
    c.once('data', (d) => { seen.push(d); c.end('ok') })
  })
  await new Promise((resolve) => pp.listen(0, '127.0.0.1', resolve))
  servers.push(pp)
  const l = await burrow.forward({ proto: 'tls', addr: pp.address().port, domain: 'pp.js.test', terminate_at: 'edge', proxy_proto: '2', ...edge.options() })
  const s = await tlsConnect(portOf(l.url()), 'pp.js.test', edge.caPem)
  const clientPort = s.localPort
  s.write('hi')
  await new Promise((resolve) => s.on('data', resolve))
  expect(seen[0].subarray(0, 12)).toEqual(Buffer.from('0d0a0d0a000d0a515549540a', 'hex'))
  expect(seen[0].readUInt16BE(24)).toBe(clientPort)
  s.destroy()

  const policy = "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {min_version: '1.3'}\n"
  const p = await burrow.forward({ proto: 'tls', addr: port, domain: 'pol.js.test', traffic_policy: policy, ...edge.options() })
  const s3 = await tlsConnect(portOf(p.url()), 'pol.js.test', edge.caPem)
  expect(s3.getProtocol()).toBe('TLSv1.3')
  await echoExact(s3, Buffer.from('policy'))
})

test('50 concurrent forward calls', async () => {
  const port = await serve()
  const ls = await Promise.all(Array.from({ length: 50 }, (_, i) => burrow.forward({ proto: 'tls', addr: port, domain: `c${i}.js.test`, terminate_at: 'edge', ...edge.options() })))
  expect(new Set(ls.map((l) => l.url())).size).toBe(50)
  await Promise.all(ls.map(async (l, i) => {
    const s = await tlsConnect(portOf(l.url()), `c${i}.js.test`, edge.caPem)
    await echoExact(s, Buffer.from(`hello ${i}`.repeat(100)))
  }))
})
