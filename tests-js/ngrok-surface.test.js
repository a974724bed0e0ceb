'use strict'
// ngrok's session and listener surface under ngrok's names: SessionBuilder hooks and
// settings, edge commands, listen() then Listener.forward(), session.listeners(),
// errors with .errorCode, X.509 v1 certificates, caCert with the embedded edge.
const { execFileSync } = require('child_process')
const fs = require('fs')
const path = require('path')
const tls = require('tls')
const burrow = require('..')
const { pki, echoServer, tlsConnect, echoExact } = require('./helpers')

jest.setTimeout(60000)

let edge
beforeAll(async () => { edge = await burrow.Edge.start({ open: true }) })
afterAll(async () => { await burrow.kill(); await edge.close() })

const builder = (e = edge) => new burrow.SessionBuilder().serverAddr(e.tunnelAddr).caCert(Buffer.from(e.caPem))

async function until (cond, what) {
  const deadline = Date.now() + 15000
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

test('clientInfo reaches the edge, most significant first', async () => {
  const session = await builder().clientInfo('lib', '0.9').clientInfo('my-app', '1.2', 'beta').metadata('m1').connect()
  const mine = edge.sessions().find((s) => s.id === session.id())
  expect(mine.clientInfo[0]).toBe('my-app/1.2 (beta)')
  expect(mine.clientInfo[1]).toBe('lib/0.9')
  expect(mine.clientInfo[2]).toMatch(/^burrow\//)
  expect(mine.metadata).toBe('m1')
  await session.close()
})

test('handleHeartbeat gets the measured latency in milliseconds', async () => {
  const latencies = []
  const session = await builder().heartbeatInterval(0.05).heartbeatTolerance(5).handleHeartbeat((ms) => latencies.push(ms)).connect()
  await until(() => latencies.length >= 3, 'three heartbeats')
  for (const ms of latencies) expect(Number.isInteger(ms) && ms >= 0).toBe(true)
  await session.close()
})

test('handleDisconnection is called on tunnel loss; returning false stops reconnecting', async () => {
  const lost = await burrow.Edge.start({ open: true })
  const calls = []
  const session = await builder(lost).handleDisconnection((addr, error) => { calls.push([addr, error]); return false }).connect()
  await lost.close()
  await until(() => calls.length >= 1, 'the disconnection hook')
  expect(calls[0][0]).toBe(lost.tunnelAddr)
  expect(calls[0][1]).not.toBe('')
  await until(() => !session._native.isOpen(), 'the session closing')
  expect(calls.length).toBe(1)
})

test('stop, restart and update commands: hooks and defaults', async () => {
  const stops = []
  const updates = []
  const hooked = await builder().handleStopCommand(() => stops.push(true)).handleUpdateCommand((u) => updates.push(u)).connect()
  await edge.sendCommand(hooked.id(), 'stop')
  await until(() => stops.length === 1, 'the stop hook')
  expect(hooked._native.isOpen()).toBe(true)
  await edge.sendCommand(hooked.id(), 'update', '2.0.0', true)
  await until(() => updates.length === 1, 'the update hook')
  expect(updates[0]).toEqual({ version: '2.0.0', permitMajorVersion: true })

  const plain = await builder().connect()
  const refused = await edge.sendCommand(plain.id(), 'update', '2.0.0').then(() => null, (e) => e)
  expect(refused.code).toBe('UNSUPPORTED')
  const before = plain.id()
  await edge.sendCommand(before, 'restart')
  // The new tunnel's id is the agent's as soon as the edge accepted it (listed here too).
  const listed = () => edge.sessions().some((s) => s.id === plain.id())
  await until(() => plain.id() !== before && listed(), 'a reconnect after restart')
  await edge.sendCommand(plain.id(), 'stop')
  await until(() => !plain._native.isOpen(), 'the default stop closing the session')
  await hooked.close()
})

test('listen() then Listener.forward(), session.listeners() and closeListener()', async () => {
  const service = await echoServer()
  const certs = pki()
  const leaf = certs.leaf('later.js.test')
  const session = await builder().connect()
  const listener = await session.tlsEndpoint().domain('later.js.test').termination(leaf.crt, leaf.key).metadata('meta').listen()
  expect(listener.forwardsTo()).toBe('')
  expect(listener.metadata()).toBe('meta')
  expect(await session.listeners()).toEqual([listener])
  await listener.forward(`localhost:${service.address().port}`)
  expect(listener.forwardsTo()).toBe(`tcp://localhost:${service.address().port}`)
  const s = await tlsConnect(edge.tlsPort, 'later.js.test', certs.ca)
  await echoExact(s, Buffer.from('forwarded after listen'.repeat(100)))
  s.destroy()
  await session.closeListener(listener.id())
  expect(await session.listeners()).toEqual([])
  await session.close()
  service.close()
})

test('errors: .code is burrow\'s, .errorCode ngrok\'s, with no "[CODE]" text', async () => {
  const guarded = await burrow.Edge.start({ authtokens: [{ token: 'right', domains: ['*.ok.test'] }] })
  const bad = await builder(guarded).authtoken('wrong').connect().then(() => null, (e) => e)
  expect(bad).toBeInstanceOf(Error)
  expect([bad.code, bad.errorCode]).toEqual(['AUTH_FAILED', 'ERR_NGROK_105'])
  expect(bad.message).not.toMatch(/\[|wrong/)
  const domain = await burrow.forward({ addr: 1, proto: 'tls', domain: 'not a domain', ...edge.options() }).then(() => null, (e) => e)
  expect([domain.code, domain.errorCode]).toEqual(['INVALID_DOMAIN', 'ERR_NGROK_326'])
  await guarded.close()
})

test('X.509 v1 self-signed certificates terminate at the edge and at the agent', async () => {
  const service = await echoServer()
  for (const at of ['edge', 'agent']) {
    const name = `v1${at}.js.test`
    const dir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'burrow-v1-'))
    const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
    run('req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-subj', `/CN=${name}`, '-out', 'csr.pem')
    run('x509', '-req', '-in', 'csr.pem', '-signkey', 'key.pem', '-days', '2', '-out', 'crt.pem')
    expect(run('x509', '-in', 'crt.pem', '-noout', '-text').toString()).toContain('Version: 1 (0x0)')
    const crt = fs.readFileSync(path.join(dir, 'crt.pem'), 'utf8')
    const key = fs.readFileSync(path.join(dir, 'key.pem'), 'utf8')
    await burrow.forward({ addr: service.address().port, proto: 'tls', domain: name, crt, key, terminate_at: at, ...edge.options() })
    // Node checks the name against the CN when a certificate has no SAN.
    const s = await tlsConnect(edge.tlsPort, name, crt, { checkServerIdentity: (host, cert) => tls.checkServerIdentity(host, cert) })
    await echoExact(s, Buffer.from('v1'.repeat(5000)))
    s.destroy()
  }
  service.close()
})

test('caCert with the embedded edge is applied, and a bad one names TLS', async () => {
  const other = pki()
  const untrusted = await new burrow.SessionBuilder().caCert(Buffer.from(other.ca)).connect().then(() => null, (e) => e)
  expect(untrusted.code).toBe('CONNECT_FAILED')
  expect(untrusted.message).toContain('TLS')
  const garbage = await new burrow.SessionBuilder().caCert(Buffer.from('not a certificate')).connect().then(() => null, (e) => e)
  expect(garbage.message).toContain('TLS')
})

test('every core error code has one ngrok mapping, seen by errors made in JavaScript too', () => {
  const native = require('../bindings-node/native.js')
  const codes = native.errorCodes()
  expect(new Set(codes.map((c) => c.code)).size).toBe(codes.length)
  expect(codes.length).toBeGreaterThan(20)
  for (const { code, ngrokCode } of codes) {
    expect(code).toMatch(/^[A-Z_]+$/)
    if (ngrokCode !== null && ngrokCode !== undefined) expect(ngrokCode).toMatch(/^ERR_NGROK_\d+$/)
  }
  const byCode = Object.fromEntries(codes.map((c) => [c.code, c.ngrokCode ?? null]))
  expect(byCode).toMatchObject({ AUTH_FAILED: 'ERR_NGROK_105', INVALID_DOMAIN: 'ERR_NGROK_326', INVALID_OPTION: null })
})
