'use strict'
// burrow for Node: ngrok-compatible `forward()` over the Rust core.
// `const ngrok = require("burrow")` runs ngrok's examples unchanged.

const native = require('./bindings-node/native.js')

function burrowError (code, message) {
  const err = new Error(message)
  err.code = code
  err.errorCode = code
  return err
}

// Native errors arrive as "[CODE] message".
function coded (err) {
  const m = /^\[([A-Z_]+)\] ([\s\S]*)$/.exec(err && err.message)
  if (!m) return err
  return burrowError(m[1], m[2])
}

async function call (fn) {
  try {
    return await fn()
  } catch (e) {
    throw coded(e)
  }
}

let defaultToken = null

// Every option name, alias, coercion and refusal lives in the Rust core (one parser for
// Python, Node, the CLI and config files); JavaScript values go to it as they are.
function parse (scope, options) {
  try {
    return native.parseOptions(options, scope, defaultToken ?? undefined)
  } catch (e) {
    throw coded(e)
  }
}

function forwardOptions (input) {
  let config = input
  if (typeof input === 'number' || typeof input === 'string') config = { addr: input }
  if (config === null || config === undefined) config = {}
  if (typeof config !== 'object') throw burrowError('INVALID_OPTION', 'forward() takes a config object, a port or an address')
  return parse('forward', config)
}

const sessions = new Map()
const listeners = new Map()

async function sessionFor (opts) {
  const key = opts.reuseKey()
  const force = opts.forceNewSession()
  if (!force && sessions.has(key)) return sessions.get(key)
  const pending = call(() => native.NativeSession.connect(opts))
  if (!force) sessions.set(key, pending)
  try {
    return await pending
  } catch (e) {
    if (sessions.get(key) === pending) sessions.delete(key)
    throw e
  }
}

/** A forwarding endpoint; keeps the process alive until closed (or `unref()`). */
class Listener {
  constructor (nativeListener) {
    this._native = nativeListener
    this._closed = false
    // An open listener holds the event loop open, as a server socket would.
    this._keepAlive = setInterval(() => {}, 1 << 30)
    listeners.set(nativeListener.id(), this)
  }

  id () { return this._native.id() }
  url () { return this._native.url() }
  proto () { return this._native.proto() }
  metadata () { return this._native.metadata() }
  forwardsTo () { return this._native.forwardsTo() }
  terminateAt () { return this._native.terminateAt() }

  /** Lets the process exit while this listener is open. */
  unref () {
    this._keepAlive.unref()
    return this
  }

  /** Stops the endpoint; calling it again does nothing. */
  async close () {
    if (!this._closed) this._native.close()
    this._release()
  }

  /** Resolves when the endpoint is closed. */
  join () { return this._native.join() }

  _release () {
    this._closed = true
    clearInterval(this._keepAlive)
    listeners.delete(this._native.id())
  }
}

async function forward (config) {
  const opts = forwardOptions(config)
  const session = await sessionFor(opts)
  return new Listener(await call(() => session.forward(opts)))
}

async function disconnect (url) {
  for (const l of [...listeners.values()]) if (url === undefined || url === null || l.url() === url) await l.close()
}

async function kill () {
  await disconnect()
  const all = [...sessions.values()]
  sessions.clear()
  for (const s of all) {
    try { await (await s).close() } catch (_) { /* a failed connect has nothing to close */ }
  }
}

function listenersList () { return [...listeners.values()] }
function getListener (id) { return listeners.get(id) ?? null }
function getListenerByUrl (url) { return listenersList().find((l) => l.url() === url) ?? null }
function authtoken (token) { defaultToken = token }

let logTimer = null
/** Calls `callback(level, message)` for burrow's Rust log events at `level` and above. */
function loggingCallback (callback, level = 'INFO') {
  native.setLogLevel(level)
  if (logTimer) clearInterval(logTimer)
  if (!callback) { native.setLogLevel('OFF'); logTimer = null; return }
  const drain = () => { for (const [lvl, msg] of native.takeLogs()) callback(lvl, msg) }
  logTimer = setInterval(drain, 100)
  logTimer.unref()
  logTimer.drain = drain
}
function consoleLog (level = 'INFO') { loggingCallback((lvl, msg) => console.log(`burrow ${lvl} ${msg}`), level) }

/** An edge running in this process, for tests. */
class Edge {
  constructor (nativeEdge) { this._native = nativeEdge }
  static async start (config = {}) { return new Edge(await call(() => native.NativeEdge.start(JSON.stringify(config)))) }
  get tunnelAddr () { return this._native.tunnelAddr() }
  get tlsAddr () { return this._native.tlsAddr() }
  get tlsPort () { return Number(this._native.tlsAddr().split(':').pop()) }
  get caPem () { return this._native.caPem() }
  /** Config keys that point forward() at this edge. */
  options () { return { server_addr: this.tunnelAddr, root_cas: this.caPem } }
  close () { return this._native.close() }
}

class Session {
  constructor (nativeSession) { this._native = nativeSession }
  tlsEndpoint () { return new TlsEndpointBuilder(this, 'tls') }
  tcpEndpoint () { return new TcpEndpointBuilder(this, 'tcp') }
  close () { return this._native.close() }
}

class SessionBuilder {
  constructor () { this._o = {} }
  authtoken (t) { this._o.authtoken = t; return this }
  authtokenFromEnv () { this._o.authtoken_from_env = true; return this }
  serverAddr (a) { this._o.server_addr = a; return this }
  rootCas (pem) { this._o.root_cas = pem; return this }
  metadata (m) { this._o.session_metadata = m; return this }
  async connect () {
    const opts = parse('session', this._o)
    return new Session(await call(() => native.NativeSession.connect(opts)))
  }
}

class EndpointBuilder {
  constructor (session, proto) { this._session = session; this._o = { proto } }
  metadata (m) { this._o.metadata = m; return this }
  forwardsTo (f) { this._o.forwards_to = f; return this }
  termination (crt, key) { Object.assign(this._o, { crt, key, terminate_at: 'edge' }); return this }
  agentTermination (crt, key) { Object.assign(this._o, { crt, key, terminate_at: 'agent' }); return this }
  mutualTlsca (ca) { this._o.mutual_tls_cas = ca; return this }
  trafficPolicy (p) { this._o.traffic_policy = p; return this }
  proxyProto (v) { this._o.proxy_proto = v; return this }
  allowCidr (c) { (this._o.allow_cidr = this._o.allow_cidr || []).push(c); return this }
  denyCidr (c) { (this._o.deny_cidr = this._o.deny_cidr || []).push(c); return this }
  async listenAndForward (url) {
    const opts = parse('endpoint', { ...this._o, addr: url })
    return new Listener(await call(() => this._session._native.forward(opts)))
  }
}
class TlsEndpointBuilder extends EndpointBuilder { domain (d) { this._o.domain = d; return this } }
class TcpEndpointBuilder extends EndpointBuilder { remoteAddr (a) { this._o.remote_addr = a; return this } }

module.exports = {
  forward,
  connect: forward,
  disconnect,
  kill,
  listeners: listenersList,
  getListener,
  getListenerByUrl,
  authtoken,
  loggingCallback,
  consoleLog,
  Edge,
  Listener,
  Session,
  SessionBuilder,
  TlsEndpointBuilder,
  TcpEndpointBuilder
}
