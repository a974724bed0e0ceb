'use strict'
// HTTP endpoints (ngrok's default) with real servers and a real HTTPS client:
// http.createServer and an Express app through listen(server), listenable(), the
// httpEndpoint() builder with ngrok's camelCase names, basic auth, and the seed example
// rewritten for HTTP. Every socket is on loopback: the client dials 127.0.0.1 and sends
// the endpoint's name as SNI and Host (what `curl --resolve` does).
const http = require('http')
const https = require('https')
const burrow = require('..')

let edge
beforeAll(async () => { edge = await burrow.Edge.start({ open: true }) })
afterEach(async () => { await burrow.kill() })
afterAll(async () => { await edge.close() })

/** GET `url + path` trusting `ca`: { status, headers, body }. */
function get (url, ca, path = '/', headers = {}) {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: Number(port || 443), servername: hostname, ca, path, headers: { host: hostname, ...headers }, agent: false }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/** The CA of the edge the module started in this process (no server address given). */
function embeddedCa (listener) {
  const e = listener._session.embeddedEdge()
  expect(e).not.toBeNull()
  return e[2]
}

function hello () {
  return http.createServer((req, res) => {
    res.setHeader('x-upstream', 'hello')
    res.end(JSON.stringify({ path: req.url, headers: req.headers }))
  })
}

function closeServer (s) { return new Promise((resolve) => s.close(() => resolve())) }

function basic (user, pass) { return { authorization: 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64') } }

test('forward() defaults to an http endpoint: https:// URL, X-Forwarded-* headers', async () => {
  const server = hello()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const l = await burrow.forward({ addr: server.address().port, ...edge.options() })
  expect(l.proto()).toBe('https')
  expect(l.url()).toMatch(/^https:\/\//)
  const r = await get(l.url(), edge.caPem, '/hi?x=1')
  expect(r.status).toBe(200)
  expect(r.headers['x-upstream']).toBe('hello')
  const seen = JSON.parse(r.body)
  expect(seen.path).toBe('/hi?x=1')
  expect(seen.headers['x-forwarded-proto']).toBe('https')
  expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1')
  expect(seen.headers['x-forwarded-host']).toContain(new URL(l.url()).hostname)
  await closeServer(server)
})

test('basic_auth: 401 without or with wrong credentials, 200 with them', async () => {
  const server = hello()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const l = await burrow.forward({ addr: server.address().port, basic_auth: 'ann:correct-horse', ...edge.options() })
  const none = await get(l.url(), edge.caPem)
  expect(none.status).toBe(401)
  expect(none.headers['www-authenticate']).toMatch(/^basic/i)
  expect(none.headers['burrow-error-code']).toBeTruthy()
  expect(JSON.stringify(none)).not.toContain('correct-horse')
  expect((await get(l.url(), edge.caPem, '/', basic('ann', 'wrong-horse!'))).status).toBe(401)
  expect((await get(l.url(), edge.caPem, '/', basic('ann', 'correct-horse'))).status).toBe(200)
  await closeServer(server)
})

test('httpEndpoint() builder with ngrok\'s camelCase names, served by listenAndServe', async () => {
  const session = await new burrow.SessionBuilder().serverAddr(edge.tunnelAddr).rootCas(edge.caPem).connect()
  const server = hello()
  const l = await session.httpEndpoint().domain('web.js.test').scheme('HTTPS').metadata('m')
    .basicAuth('ann', 'correct-horse').requestHeader('X-Added', 'yes').removeRequestHeader('X-Secret')
    .responseHeader('X-Resp', '1').removeResponseHeader('X-Upstream').allowCidr('127.0.0.0/8')
    .denyUserAgent('^badbot').forwardsTo('hello').listenAndServe(server)
  expect(l.proto()).toBe('https')
  expect(l.url()).toMatch(/^https:\/\/web\.js\.test/)
  expect(l.metadata()).toBe('m')
  const ok = await get(l.url(), edge.caPem, '/', { ...basic('ann', 'correct-horse'), 'x-secret': 's' })
  expect(ok.status).toBe(200)
  const seen = JSON.parse(ok.body)
  expect(seen.headers['x-added']).toBe('yes')
  expect(seen.headers['x-secret']).toBeUndefined()
  expect(ok.headers['x-resp']).toBe('1')
  expect(ok.headers['x-upstream']).toBeUndefined()
  const bot = await get(l.url(), edge.caPem, '/', { ...basic('ann', 'correct-horse'), 'user-agent': 'badbot/1' })
  expect(bot.status).toBe(403)
  expect(bot.headers['ngrok-error-code']).toBe('ERR_NGROK_3211')
  await l.close()
  await session.close()
})

test('httpEndpoint() refusals match Python\'s (the core parser decides)', async () => {
  const session = await new burrow.SessionBuilder().serverAddr(edge.tunnelAddr).rootCas(edge.caPem).connect()
  const refused = async (fn) => { try { await fn() } catch (e) { return e } return null }
  let e = await refused(() => session.httpEndpoint().oauth('google'))
  expect([e.code, e.message]).toEqual(['UNSUPPORTED', expect.stringContaining('oauth_provider')])
  e = await refused(() => session.httpEndpoint().oidc('https://id.example', 'id', 'secret'))
  expect([e.code, e.message]).toEqual(['UNSUPPORTED', expect.stringContaining('oidc')])
  e = await refused(() => session.httpEndpoint().basicAuth('ann', 'short').listenAndForward(8080))
  expect([e.code, e.message]).toEqual(['INVALID_OPTION', expect.stringContaining('8 to 128')])
  expect(e.message).not.toContain('short')
  e = await refused(() => session.httpEndpoint().basicAuth('a:b', 'long-enough').listenAndForward(8080))
  expect([e.code, e.message]).toEqual(['INVALID_OPTION', expect.stringContaining("':'")])
  e = await refused(() => session.httpEndpoint().webhookVerification('twilio', 's3cret-s3cret').listenAndForward(8080))
  expect([e.code, e.message]).toEqual(['UNSUPPORTED', expect.stringContaining('twilio')])
  e = await refused(() => session.httpEndpoint().appProtocol('spdy').listenAndForward(8080))
  expect([e.code, e.message]).toEqual(['INVALID_OPTION', expect.stringContaining('app_protocol')])
  await session.close()
})

test('listen(http.createServer()) serves it on a unix socket behind a new endpoint', async () => {
  const server = hello()
  const bound = await burrow.listen(server)
  const l = bound.listener
  expect(bound.tunnel).toBe(l)
  expect(l.proto()).toBe('https')
  expect(l.forwardsTo()).toMatch(/^unix:/)
  const r = await get(l.url(), embeddedCa(l), '/via-listen')
  expect(r.status).toBe(200)
  expect(JSON.parse(r.body).path).toBe('/via-listen')
  await l.close()
  expect(server.listening).toBe(false)
})

test('listen(expressApp) serves an Express app', async () => {
  const express = require('express')
  const app = express()
  app.get('/express/:name', (req, res) => res.json({ hello: req.params.name, proto: req.get('x-forwarded-proto') }))
  const bound = await burrow.listen(app)
  const l = bound.listener
  const r = await get(l.url(), embeddedCa(l), '/express/ann')
  expect(r.status).toBe(200)
  expect(JSON.parse(r.body)).toEqual({ hello: 'ann', proto: 'https' })
  await l.close()
})

test('listenable(): server.listen(listener) takes over its socket', async () => {
  const l = await burrow.listenable()
  const server = hello()
  await new Promise((resolve, reject) => server.listen(l, resolve).once('error', reject))
  // Forwarding starts when Node takes the socket (the `handle` getter), asynchronously:
  // wait for it to be set rather than racing it.
  const deadline = Date.now() + 10000
  while (l.forwardsTo() === '' && Date.now() < deadline) await new Promise((resolve) => setImmediate(resolve))
  const r = await get(l.url(), embeddedCa(l), '/listenable')
  expect(r.status).toBe(200)
  expect(JSON.parse(r.body).path).toBe('/listenable')
  expect(l.forwardsTo()).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/)
  await closeServer(server)
})

test('Edge exposes httpAddr; an http:// url serves plain HTTP there', async () => {
  // An in-process edge has a plain-HTTP listener on loopback unless http_addr says otherwise.
  expect(edge.httpAddr).toMatch(/^127\.0\.0\.1:\d+$/)
  const plain = await burrow.Edge.start({ open: true, http_addr: '127.0.0.2:0' })
  try {
    expect(plain.httpAddr).toMatch(/^127\.0\.0\.2:\d+$/)
    const server = hello()
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    const l = await burrow.forward({ addr: server.address().port, url: 'http://plain.js.test', ...plain.options() })
    expect(l.url()).toMatch(/^http:\/\/plain\.js\.test/)
    const [host, port] = plain.httpAddr.split(':')
    const r = await new Promise((resolve, reject) => {
      http.get({ host, port: Number(port), path: '/plain', headers: { host: 'plain.js.test' }, agent: false }, (res) => {
        let body = ''
        res.on('data', (c) => { body += c })
        res.on('end', () => resolve({ status: res.statusCode, body }))
      }).on('error', reject)
    })
    expect(r.status).toBe(200)
    expect(JSON.parse(r.body).path).toBe('/plain')
    await burrow.kill()
    await closeServer(server)
  } finally {
    await plain.close()
  }
})

test('the seed example for HTTP runs as written: forward(8080) gives an https:// URL that answers', async () => {
  const server = hello()
  await new Promise((resolve, reject) => server.listen(8080, '127.0.0.1', resolve).once('error', reject))
  const ngrok = burrow
  // As written for ngrok, with `require("burrow")` for `require("@ngrok/ngrok")`:
  const listener = await ngrok.forward({ addr: 8080, authtoken_from_env: true })
  expect(listener.url()).toMatch(/^https:\/\//)
  expect(listener.proto()).toBe('https')
  const r = await get(listener.url(), embeddedCa(listener), '/seed')
  expect(r.status).toBe(200)
  expect(JSON.parse(r.body).path).toBe('/seed')
  await closeServer(server)
})
