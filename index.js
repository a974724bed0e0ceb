'use strict'
// burrow for Node: ngrok-compatible `forward()` over the Rust core.
// `const ngrok = require("burrow")` runs ngrok's examples unchanged.

const native = require('./bindings-node/native.js')

const SESSION_KEYS = new Set(['authtoken', 'authtoken_from_env', 'server_addr', 'root_cas', 'session_ca_cert',
  'session_metadata', 'force_new_session'])
const ENDPOINT_KEYS = new Set(['addr', 'proto', 'domain', 'hostname', 'url', 'crt', 'key', 'mutual_tls_cas',
  'terminate_at', 'traffic_policy', 'policy', 'proxy_proto', 'metadata', 'forwards_to', 'allow_cidr', 'deny_cidr',
  'remote_addr', 'verify_upstream_tls', 'upstream_root_cas'])
// ngrok options burrow knows but does not implement (mostly HTTP endpoint features).
const UNSUPPORTED = new Set(['pooling_enabled', 'basic_auth', 'circuit_breaker', 'compression', 'oauth_provider',
  'oauth_allow_domains', 'oauth_allow_emails', 'oauth_scopes', 'oidc_issuer_url', 'oidc_client_id',
  'oidc_client_secret', 'request_header_add', 'request_header_remove', 'response_header_add',
  'response_header_remove', 'schemes', 'websocket_tcp_converter', 'app_protocol', 'labels',
  'verify_webhook_provider', 'verify_webhook_secret', 'ip_restriction_allow_cidrs', 'ip_restriction_deny_cidrs',
  'onStatusChange', 'on_status_change', 'session_ca_certs', 'bindings'])
const LIST_KEYS = new Set(['allow_cidr', 'deny_cidr'])
const PEM_KEYS = new Set(['crt', 'key', 'mutual_tls_cas', 'root_cas', 'session_ca_cert', 'upstream_root_cas'])

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

function pem (name, value) {
  if (typeof value === 'string') return Buffer.from(value)
  if (Buffer.isBuffer(value)) return value
  if (value instanceof Uint8Array) return Buffer.from(value)
  throw burrowError('INVALID_OPTION', `${name} must be PEM text (string) or a Buffer/Uint8Array`)
}

let defaultToken = null

function normalize (input) {
  let config = input
  if (typeof input === 'number' || typeof input === 'string') config = { addr: input }
  if (config === null || config === undefined) config = {}
  if (typeof config !== 'object') throw burrowError('INVALID_OPTION', 'forward() takes a config object, a port or an address')
  const o = {}
  for (const [rawKey, value] of Object.entries(config)) {
    const key = rawKey.replace(/\./g, '_')
    if (value === null || value === undefined) continue
    if (UNSUPPORTED.has(key)) throw burrowError('UNSUPPORTED', `option "${rawKey}" is an ngrok option burrow does not support`)
    if (!SESSION_KEYS.has(key) && !ENDPOINT_KEYS.has(key)) throw burrowError('INVALID_OPTION', `unknown option "${rawKey}"`)
    o[key] = value
  }
  if (o.hostname !== undefined && o.domain === undefined) o.domain = o.hostname
  if (o.policy !== undefined && o.traffic_policy === undefined) o.traffic_policy = o.policy
  if (o.session_ca_cert !== undefined && o.root_cas === undefined) o.root_cas = o.session_ca_cert
  if (o.url !== undefined) {
    const m = /^(tls|tcp):\/\/(.+)$/.exec(String(o.url))
    if (!m) throw burrowError('INVALID_URL', `url "${o.url}" must be tls://NAME or tcp://HOST:PORT`)
    if (o.proto === undefined) o.proto = m[1]
    if (m[1] === 'tls' && o.domain === undefined) o.domain = m[2].split(':')[0]
    if (m[1] === 'tcp' && o.remote_addr === undefined) o.remote_addr = m[2]
  }
  const proto = String(o.proto ?? 'tls')
  if (['http', 'https', 'labeled'].includes(proto)) throw burrowError('UNSUPPORTED', `proto "${proto}" is not supported yet: burrow serves tls and tcp endpoints`)
  if (proto !== 'tls' && proto !== 'tcp') throw burrowError('INVALID_OPTION', `proto "${proto}" is not one of "tls", "tcp"`)
  let addr = o.addr ?? 80
  if (typeof addr === 'string' && /^\d+$/.test(addr)) addr = Number(addr)
  if (typeof addr === 'number') addr = `localhost:${addr}`
  if (typeof addr !== 'string') throw burrowError('INVALID_URL', 'addr must be a port number or an address string')
  for (const k of PEM_KEYS) if (o[k] !== undefined) o[k] = pem(k, o[k])
  for (const k of LIST_KEYS) if (o[k] !== undefined) o[k] = Array.isArray(o[k]) ? o[k].map(String) : [String(o[k])]
  if ((o.crt === undefined) !== (o.key === undefined)) {
    throw burrowError('INVALID_OPTION', `Missing ${o.crt === undefined ? 'crt' : 'key'} for tls termination`)
  }
  let authtoken = o.authtoken
  if (authtoken === undefined && o.authtoken_from_env) authtoken = process.env.BURROW_AUTHTOKEN || process.env.NGROK_AUTHTOKEN || undefined
  if (authtoken === undefined && defaultToken) authtoken = defaultToken
  const serverAddr = o.server_addr ?? (process.env.BURROW_SERVER_ADDR || undefined)
  return {
    force: Boolean(o.force_new_session),
    session: { authtoken, serverAddr, rootCas: o.root_cas, sessionMetadata: o.session_metadata },
    endpoint: {
      proto,
      addr,
      domain: o.domain,
      remoteAddr: o.remote_addr,
      crt: o.crt,
      key: o.key,
      mutualTlsCas: o.mutual_tls_cas,
      terminateAt: o.terminate_at,
      trafficPolicy: o.traffic_policy,
      proxyProto: o.proxy_proto === undefined ? undefined : String(o.proxy_proto),
      metadata: o.metadata,
      forwardsTo: o.forwards_to,
      allowCidr: o.allow_cidr,
      denyCidr: o.deny_cidr,
      verifyUpstreamTls: o.verify_upstream_tls,
      upstreamRootCas: o.upstream_root_cas
    }
  }
}

const sessions = new Map()
const listeners = new Map()

function sessionKey (s) {
  return JSON.stringify([s.serverAddr, s.authtoken, s.rootCas && s.rootCas.toString('base64'), s.sessionMetadata])
}

async function sessionFor (norm) {
  const key = sessionKey(norm.session)
  if (!norm.force && sessions.has(key)) return sessions.get(key)
  const pending = call(() => native.NativeSession.connect(norm.session))
  if (!norm.force) sessions.set(key, pending)
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
  const norm = normalize(config)
  const session = await sessionFor(norm)
  return new Listener(await call(() => session.forward(norm.endpoint)))
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

function toml (config) {
  const c = { ...config }
  if (c.open === undefined) c.open = !c.authtokens
  if (c.tcp_ports === undefined) c.tcp_ports = [0, 0]
  const lit = (v) => Array.isArray(v) ? `[${v.map(lit).join(', ')}]` : (typeof v === 'string' ? JSON.stringify(v) : String(v))
  const lines = []
  const tables = []
  for (const [k, v] of Object.entries(c)) {
    if (k === 'authtokens') for (const rule of v) tables.push('[[authtokens]]\n' + Object.entries(rule).map(([rk, rv]) => `${rk} = ${lit(rv)}`).join('\n'))
    else lines.push(`${k} = ${lit(v)}`)
  }
  return lines.concat(tables).join('\n') + '\n'
}

/** An edge running in this process, for tests. */
class Edge {
  constructor (nativeEdge) { this._native = nativeEdge }
  static async start (config = {}) { return new Edge(await call(() => native.NativeEdge.start(toml(config)))) }
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
    const norm = normalize(this._o)
    return new Session(await call(() => native.NativeSession.connect(norm.session)))
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
    const norm = normalize({ ...this._o, addr: url })
    return new Listener(await call(() => this._session._native.forward(norm.endpoint)))
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
