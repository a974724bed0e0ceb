'use strict'
const burrow = require('..')
const { pki, echoServer, tlsConnect, echoExact, portOf, hostOf } = require('./helpers')
const { spawnSync, execFileSync } = require('child_process')
const fs = require('fs')
const path = require('path')

let edge
const servers = []
beforeAll(async () => { edge = await burrow.Edge.start({ open: true }) })
afterEach(async () => { await burrow.kill(); while (servers.length) servers.pop().close() })
afterAll(async () => { await edge.close() })
async function serve () { const s = await echoServer(); servers.push(s); return s.address().port }

test('forward returns a promise (checked by .then: napi promises come from another realm)', async () => {
  const p = burrow.forward({ proto: 'tls', addr: await serve(), terminate_at: 'edge', ...edge.options() })
  expect(typeof p.then).toBe('function')
  await p
})

test('listener methods, idempotent close, disconnect one URL, lookups', async () => {
  const port = await serve()
  const a = await burrow.forward({ proto: 'tls', addr: port, domain: 'a.js.test', terminate_at: 'edge', metadata: 'm', forwards_to: 'svc', ...edge.options() })
  const b = await burrow.forward({ proto: 'tls', addr: port, domain: 'b.js.test', terminate_at: 'edge', ...edge.options() })
  expect(a.metadata()).toBe('m')
  expect(a.forwardsTo()).toBe('svc')
  expect(a.proto()).toBe('tls')
  expect(burrow.getListener(a.id())).toBe(a)
  expect(burrow.getListenerByUrl(b.url())).toBe(b)
  await burrow.disconnect(a.url())
  await a.close()
  await a.join()
  expect(burrow.listeners()).toEqual([b])
  const s = await tlsConnect(portOf(b.url()), 'b.js.test', edge.caPem)
  await echoExact(s, Buffer.from('b works'))
})

test('builders in camelCase', async () => {
  const certs = pki()
  const cert = certs.leaf('built.js.test')
  const session = await new burrow.SessionBuilder().serverAddr(edge.tunnelAddr).rootCas(edge.caPem).connect()
  const l = await session.tlsEndpoint().domain('built.js.test').agentTermination(cert.crt, cert.key).listenAndForward(await serve())
  expect(l.terminateAt()).toBe('agent')
  const s = await tlsConnect(portOf(l.url()), 'built.js.test', certs.ca)
  await echoExact(s, Buffer.from('built'))
  await l.close()
  await session.close()
})

// Endpoint pools: ngrok's pooling_enabled lets several sessions serve one name.
test('pooled listeners share a domain; a listener that did not opt in is refused', async () => {
  const domain = 'app.pool.js.test'
  const options = { proto: 'tls', domain, terminate_at: 'edge', pooling_enabled: true, ...edge.options() }
  // Two sessions (as two agents would be), both opting in: both get the name's URL.
  const first = await burrow.forward({ addr: await serve(), ...options })
  const second = await burrow.forward({ addr: await serve(), force_new_session: true, ...options })
  expect(first.url()).toBe(`tls://${domain}:${edge.tlsPort}`)
  expect(second.url()).toBe(first.url())
  for (let i = 0; i < 4; i++) {
    const s = await tlsConnect(portOf(first.url()), domain, edge.caPem)
    await echoExact(s, Buffer.from(`pooled ${i}`))
  }

  // A third session without the option is refused, as for any name another session holds.
  const refused = burrow.forward({ proto: 'tls', addr: await serve(), domain, force_new_session: true, ...edge.options() })
  await expect(refused).rejects.toMatchObject({ code: 'DOMAIN_TAKEN', errorCode: 'ERR_NGROK_334' })

  // The builder spells it as ngrok's does.
  const session = await new burrow.SessionBuilder().serverAddr(edge.tunnelAddr).rootCas(edge.caPem).connect()
  const third = await session.tlsEndpoint().domain(domain).poolingEnabled(true).listen()
  expect(third.url()).toBe(first.url())
  await session.close()
})

test('errors carry .code, .errorCode and a message naming the problem', async () => {
  const cases = [
    [{ addr: 1, domian: 'x' }, 'INVALID_OPTION', 'domian'],
    [{ addr: 1, pooling_enabled: 'yes' }, 'INVALID_OPTION', 'pooling_enabled must be true or false'],
    [{ addr: 1, bindings: ['public'] }, 'UNSUPPORTED', 'bindings'],
    [{ addr: 1, proto: 'labeled' }, 'UNSUPPORTED', 'labeled'],
    [{ addr: 1, proto: 'tls', basic_auth: 'ann:long-enough' }, 'INVALID_OPTION', 'basic_auth'],
    [{ addr: 1, oauth_provider: 'google' }, 'UNSUPPORTED', 'oauth_provider'],
    [{ addr: 1, crt: 'x' }, 'INVALID_OPTION', 'Missing key for tls termination'],
    [{ addr: 1, domain: 'app.test', crt: 'not pem', key: 'nope' }, 'INVALID_PEM', 'crt'],
    [{ addr: 1, proto: 'tls', traffic_policy: 'on_tcp_connect:\n  - actions: [{type: fly}]\n' }, 'INVALID_POLICY', 'on_tcp_connect[0].actions[0].type'],
    [{ addr: 'ftp://x:1' }, 'INVALID_URL', 'ftp']
  ]
  for (const [config, code, text] of cases) {
    const err = await burrow.forward({ ...config, ...edge.options() }).then(() => null, (e) => e)
    expect(err).toBeInstanceOf(Error)
    expect(err.code).toBe(code)
    expect(err.errorCode).toBe(code === 'INVALID_POLICY' ? 'ERR_NGROK_2236' : code)
    expect(err.message).toContain(text)
    expect(err.message).not.toMatch(/^\[/)
  }
  const guarded = await burrow.Edge.start({ authtokens: [{ token: 'right', domains: ['*.ok.test'] }] })
  const bad = await burrow.forward({ addr: 1, authtoken: 'wrong', ...guarded.options() }).then(() => null, (e) => e)
  expect(bad.code).toBe('AUTH_FAILED')
  expect(bad.errorCode).toBe('ERR_NGROK_105')
  expect(bad.message).not.toContain('wrong')
  const refused = await burrow.forward({ addr: 1, authtoken: 'right', domain: 'x.other.test', ...guarded.options() }).then(() => null, (e) => e)
  expect(refused.code).toBe('DOMAIN_NOT_ALLOWED')
  expect(refused.errorCode).toBe('ERR_NGROK_319')
  await burrow.kill()
  await guarded.close()
})

test('logging callback receives Rust log events', async () => {
  const lines = []
  burrow.loggingCallback((level, message) => lines.push(`${level} ${message}`), 'INFO')
  const l = await burrow.forward({ proto: 'tls', addr: await serve(), terminate_at: 'edge', ...edge.options() })
  await new Promise((resolve) => setTimeout(resolve, 250))
  expect(lines.some((x) => x.includes('endpoint online'))).toBe(true)
  burrow.loggingCallback(null)
  await l.close()
})

const root = path.join(__dirname, '..')
function child (code, timeout = 20000) {
  return spawnSync(process.execPath, ['-e', code], { cwd: root, encoding: 'utf8', timeout })
}

test('an open listener keeps the process alive; unref() and close() let it exit', () => {
  const prelude = "const b=require('./index.js');const net=require('net');(async()=>{const e=await b.Edge.start({open:true});" +
    "const s=net.createServer(c=>c.pipe(c)).listen(0,'127.0.0.1');await new Promise(r=>s.on('listening',r));s.unref();" +
    "const l=await b.forward({proto:'tls',addr:s.address().port,terminate_at:'edge',...e.options()});console.log('up');"
  const alive = child(prelude + '})()', 5000)
  expect(alive.stdout).toContain('up')
  expect(alive.error && alive.error.code).toBe('ETIMEDOUT') // still running when the 5 s timeout hit
  const unref = child(prelude + 'l.unref();})()')
  expect(unref.status).toBe(0)
  const closed = child(prelude + 'await b.kill();await e.close();})()')
  expect(closed.status).toBe(0)
}, 60000)

test('works from ESM too', () => {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', "import { forward, Edge } from './index.mjs'; import b from './index.mjs'; console.log(typeof forward, typeof Edge.start, typeof b.kill)"], { cwd: root, encoding: 'utf8' })
  expect(r.stdout.trim()).toBe('function function function')
})

test('index.d.ts types the whole surface (tsc --noEmit --strict)', () => {
  const file = path.join(__dirname, 'surface.ts')
  const tsc = path.join(root, 'node_modules', '.bin', 'tsc')
  const out = spawnSync(tsc, ['--noEmit', '--strict', '--esModuleInterop', '--target', 'es2020', '--module', 'commonjs', '--moduleResolution', 'node', '--types', 'node', file], { cwd: root, encoding: 'utf8' })
  expect(out.stdout + out.stderr).toBe('')
  expect(out.status).toBe(0)
  const bad = path.join(require('os').tmpdir(), `burrow-bad-${process.pid}.ts`)
  fs.writeFileSync(bad, `import * as burrow from '${root}';\nburrow.forward({ addr: 1, terminate_at: 'nowhere' })\n`)
  const rejected = spawnSync(tsc, ['--noEmit', '--strict', '--types', 'node', bad], { cwd: root, encoding: 'utf8' })
  expect(rejected.status).not.toBe(0)
  expect(rejected.stdout).toContain("'\"nowhere\"' is not assignable to type 'TerminateAt")
  void execFileSync
})
