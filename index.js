'use strict'
// burrow for Node: ngrok-compatible `forward()` over the Rust core.
// `const ngrok = require("burrow")` runs ngrok's examples unchanged.

const fs = require('fs')
const net = require('net')
const os = require('os')
const path = require('path')
const native = require('./bindings-node/native.js')

// ngrok's code for each burrow code where ngrok has one (the core owns the mapping).
const NGROK_CODES = new Map(native.errorCodes().map((c) => [c.code, c.ngrokCode ?? c.code]))

/** An error made here (native errors arrive with `.code` and `.errorCode` already set). */
function burrowError (code, message) {
  const err = new Error(message)
  err.code = code
  err.errorCode = NGROK_CODES.get(code) ?? code
  return err
}

// Native errors already carry `.code` and `.errorCode`; they are copied into an Error of
// this module's realm so that `instanceof Error` holds where the realm differs (jest's vm).
function ours (e) {
  if (e === null || typeof e !== 'object' || typeof e.code !== 'string' || e instanceof Error) return e
  const err = new Error(e.message)
  err.code = e.code
  err.errorCode = e.errorCode ?? NGROK_CODES.get(e.code) ?? e.code
  return err
}

async function call (fn) {
  try {
    return await fn()
  } catch (e) {
    throw ours(e)
  }
}

let defaultToken = null

// Every option name, alias, coercion and refusal lives in the Rust core (one parser for
// Python, Node, the CLI and config files); JavaScript values go to it as they are.
function parse (scope, options) {
  try {
    return native.parseOptions(options, scope, defaultToken ?? undefined)
  } catch (e) {
    throw ours(e)
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
  constructor (nativeListener, session = null) {
    this._native = nativeListener
    this._session = session
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

  /** Starts forwarding a listener made by `listen()` to `addr` (ngrok's `forward`). */
  async forward (addr) {
    const opts = parse('endpoint', { addr, proto: this.proto() })
    await call(() => this._native.forward(opts))
  }

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
  return new Listener(await call(() => session.forward(opts)), session)
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
  /** Authenticated sessions: `{ id, clientInfo, metadata }` each. */
  sessions () { return this._native.sessions().map(([id, clientInfo, metadata]) => ({ id, clientInfo, metadata })) }
  /** Sends ngrok's "stop", "restart" or "update" command to a session; rejects with its refusal.
   * `reason` goes with "stop" (the agent logs it; `handleStopCommand` handlers get it). */
  sendCommand (sessionId, command, version, permitMajorVersion, reason) {
    return call(() => this._native.sendCommand(sessionId, command, version, permitMajorVersion, reason))
  }
  get tunnelAddr () { return this._native.tunnelAddr() }
  get tlsAddr () { return this._native.tlsAddr() }
  get tlsPort () { return Number(this._native.tlsAddr().split(':').pop()) }
  /** The plain-HTTP listener of http endpoints (`host:port`), or null when the edge has none. */
  get httpAddr () { return this._native.httpAddr() ?? null }
  /** The admin API (`host:port`), or null without `admin_addr`. */
  get adminAddr () { return this._native.adminAddr() ?? null }
  /** The Prometheus listener (`host:port`, `GET /metrics`), or null without `metrics_addr`. */
  get metricsAddr () { return this._native.metricsAddr() ?? null }
  /** The edge's metrics in the OpenMetrics text format. */
  metricsText () { return this._native.metricsText() }
  get caPem () { return this._native.caPem() }
  /** Config keys that point forward() at this edge. */
  options () { return { server_addr: this.tunnelAddr, root_cas: this.caPem } }
  close () { return this._native.close() }
}

class Session {
  constructor (nativeSession) { this._native = nativeSession }
  /** An HTTP endpoint (an https:// URL; the edge terminates TLS and proxies requests). */
  httpEndpoint () { return new HttpListenerBuilder(this, 'http') }
  tlsEndpoint () { return new TlsEndpointBuilder(this, 'tls') }
  tcpEndpoint () { return new TcpEndpointBuilder(this, 'tcp') }
  /** The session id the edge gave. */
  id () { return this._native.id() }
  /** The session's Prometheus metrics (text format). */
  metricsText () { return this._native.metricsText() }
  /** The session now: edges, endpoints with ngrok's `conns` counters, recent connections. */
  status () { return JSON.parse(this._native.statusJson()) }
  /** This session's open listeners (ngrok's `session.listeners()`). */
  async listeners () { return listenersList().filter((l) => l._session === this._native) }
  /** Closes this session's listener with `id` (ngrok's `closeListener`). */
  async closeListener (id) {
    const l = listeners.get(id)
    if (l && l._session === this._native) await l.close()
  }
  async close () {
    for (const l of await this.listeners()) await l.close()
    return this._native.close()
  }
}

class SessionBuilder {
  constructor () { this._o = {}; this._hooks = new native.NativeHooks() }
  authtoken (t) { this._o.authtoken = t; return this }
  authtokenFromEnv () { this._o.authtoken_from_env = true; return this }
  serverAddr (a) { this._o.server_addr = a; return this }
  rootCas (pem) { this._o.root_cas = pem; return this }
  /** ngrok's name for `rootCas`. */
  caCert (pem) { return this.rootCas(pem) }
  clientInfo (clientType, version, comments) { this._hooks.clientInfo(clientType, version, comments ?? undefined); return this }
  /** Seconds between heartbeats. */
  heartbeatInterval (seconds) { this._hooks.heartbeatInterval(seconds); return this }
  /** Seconds a heartbeat may go unanswered before the session reconnects. */
  heartbeatTolerance (seconds) { this._hooks.heartbeatTolerance(seconds); return this }
  /** `handler(latencyMs)` after each answered heartbeat. */
  handleHeartbeat (handler) { this._hooks.handleHeartbeat(handler); return this }
  /** `handler(addr, error)` on each tunnel loss or failed reconnect; return false to stop reconnecting. */
  handleDisconnection (handler) { this._hooks.handleDisconnection(handler); return this }
  /** `handler()` when the edge asks the session to stop, instead of closing it. */
  handleStopCommand (handler) { this._hooks.handleStopCommand(handler); return this }
  /** `handler()` when the edge asks for a restart, instead of reconnecting. */
  handleRestartCommand (handler) { this._hooks.handleRestartCommand(handler); return this }
  /** `handler({ version, permitMajorVersion })` when the edge asks for an update (refused without one). */
  handleUpdateCommand (handler) { this._hooks.handleUpdateCommand(handler); return this }
  metadata (m) { this._o.session_metadata = m; return this }
  async connect () {
    const opts = parse('session', this._o)
    return new Session(await call(() => native.NativeSession.connect(opts, this._hooks)))
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
  /** ngrok's other name for `trafficPolicy`. */
  policy (p) { return this.trafficPolicy(p) }
  verifyUpstreamTls (verify) { this._o.verify_upstream_tls = verify; return this }
  proxyProto (v) { this._o.proxy_proto = v; return this }
  allowCidr (c) { (this._o.allow_cidr = this._o.allow_cidr || []).push(c); return this }
  denyCidr (c) { (this._o.deny_cidr = this._o.deny_cidr || []).push(c); return this }
  poolingEnabled (enabled) { this._o.pooling_enabled = enabled; return this }
  async listenAndForward (url) {
    const opts = parse('endpoint', { ...this._o, addr: url })
    return new Listener(await call(() => this._session._native.forward(opts)), this._session._native)
  }

  /** Binds without a forwarding target (ngrok's `listen()`); see `Listener.forward`. */
  async listen () {
    const opts = parse('endpoint', { ...this._o })
    return new Listener(await call(() => this._session._native.listen(opts)), this._session._native)
  }

  /** Binds, then serves `server` (an `http.Server`, or an Express app) on it: see `listen(server)`. */
  async listenAndServe (server) {
    const listener = await this.listen()
    await listen(server, listener)
    return listener
  }
}

// ngrok's option strings are "a:b"; a ':' in the first half would move the split.
function noColon (what, value) {
  if (String(value).includes(':')) throw burrowError('INVALID_OPTION', `${what} ${JSON.stringify(value)} must not contain ':'`)
}

/** ngrok's HttpListenerBuilder: every setting goes to the core's option parser, under ngrok's option name. */
class HttpListenerBuilder extends EndpointBuilder {
  _add (key, value) { (this._o[key] = this._o[key] || []).push(value); return this }
  domain (d) { this._o.domain = d; return this }
  /** A scheme to serve: "HTTPS" (the default) or "HTTP" (repeatable). */
  scheme (s) { return this._add('schemes', s) }
  /** Clients must send these credentials (repeatable); the password takes 8 to 128 characters. */
  basicAuth (username, password) { noColon('basicAuth: the user name', username); return this._add('basic_auth', `${username}:${password}`) }
  allowUserAgent (regex) { return this._add('allow_user_agent', regex) }
  denyUserAgent (regex) { return this._add('deny_user_agent', regex) }
  /** "http1" or "http2": how the edge speaks to the upstream. */
  appProtocol (p) { this._o.app_protocol = p; return this }
  /** Answer 503 while this fraction (0..1) of responses are 5xx. */
  circuitBreaker (fraction) { this._o.circuit_breaker = fraction; return this }
  compression () { this._o.compression = true; return this }
  requestHeader (name, value) { noColon('requestHeader: the header name', name); return this._add('request_header_add', `${name}:${value}`) }
  responseHeader (name, value) { noColon('responseHeader: the header name', name); return this._add('response_header_add', `${name}:${value}`) }
  removeRequestHeader (name) { return this._add('request_header_remove', name) }
  removeResponseHeader (name) { return this._add('response_header_remove', name) }
  /** The Host header sent upstream instead of the client's. */
  hostHeader (host) { this._o.host_header = host; return this }
  /** Verify `provider`'s signature ("github", "stripe", "slack") made with `secret` on every request. */
  webhookVerification (provider, secret) { Object.assign(this._o, { verify_webhook_provider: provider, verify_webhook_secret: secret }); return this }
  websocketTcpConversion () { this._o.websocket_tcp_converter = true; return this }
  /** ngrok's OAuth: refused with UNSUPPORTED (the core says why). */
  oauth (provider) { parse('endpoint', { proto: 'http', oauth_provider: provider }); return this }
  /** ngrok's OIDC: refused with UNSUPPORTED (the core says why). */
  oidc (issuerUrl) { parse('endpoint', { proto: 'http', oidc_issuer_url: issuerUrl }); return this }
}
class TlsEndpointBuilder extends EndpointBuilder { domain (d) { this._o.domain = d; return this } }
class TcpEndpointBuilder extends EndpointBuilder { remoteAddr (a) { this._o.remote_addr = a; return this } }

// ngrok's web-framework helpers (its trailer.js): put a Node server behind an HTTP endpoint.

/** An HTTP endpoint on the shared session (authtoken_from_env), forwarding nowhere yet. */
async function defaultListener () {
  const opts = parse('forward', { authtoken_from_env: true, proto: 'http' })
  const session = await sessionFor(opts)
  return new Listener(await call(() => session.listen(opts)), session)
}

function listenOn (server, options) {
  return new Promise((resolve, reject) => {
    const bound = server.listen(options)
    bound.once('listening', () => resolve(bound)).once('error', reject)
  })
}

// A unix socket path of at most 100 characters (the OS limit is about 104).
function pipeName (listener) {
  return path.join(os.tmpdir(), `burrow-${process.pid}-${listener.id().slice(-12)}.sock`).slice(0, 100)
}

/**
 * Serves `server` (an `http.Server`, `net.Server`, an Express app, ...) on a local unix
 * socket (else 127.0.0.1 on a port the OS picks) and forwards `listener`, or a new HTTP
 * endpoint, there. Returns the listening server (Express's `app.listen` makes a new
 * one); its `.listener` (and `.tunnel`, ngrok's name) is the endpoint.
 */
async function listen (server, listener) {
  if (!listener) listener = await defaultListener()
  if (listener._bound) { listener._bound.close(); listener._bound = null }
  let bound
  if (process.platform !== 'win32') {
    const file = pipeName(listener)
    try { fs.unlinkSync(file) } catch (_) { /* none left over */ }
    try {
      bound = await listenOn(server, { path: file })
      fs.chmodSync(file, 0o700)
      await listener.forward(`unix:${file}`)
      bound.once('close', () => { try { fs.unlinkSync(file) } catch (_) { /* gone */ } })
    } catch (e) {
      if (bound) bound.close()
      bound = null
    }
  }
  if (!bound) {
    bound = await listenOn(server, { host: '127.0.0.1', port: 0 })
    await listener.forward(`127.0.0.1:${bound.address().port}`)
  }
  const closeListener = listener.close.bind(listener)
  listener.close = async () => { bound.close(); await closeListener() }
  server.listener = server.tunnel = listener
  bound.listener = bound.tunnel = listener
  return bound
}

/**
 * A new HTTP endpoint usable as `server.listen(listener)` (ngrok's `listenable()`): it
 * holds a socket bound on 127.0.0.1, which `listen()` takes over through `handle`;
 * forwarding starts then.
 */
async function listenable () {
  const listener = await defaultListener()
  const socket = await listenOn(new net.Server(), { host: '127.0.0.1', port: 0 })
  listener._bound = socket
  Object.defineProperty(listener, 'handle', {
    configurable: true,
    get () {
      listener.forward(`127.0.0.1:${socket.address().port}`).catch((e) => socket.emit('error', e))
      return socket._handle
    }
  })
  return listener
}

module.exports = {
  forward,
  listen,
  listenable,
  HttpListenerBuilder,
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
