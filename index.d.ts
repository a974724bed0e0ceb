/// <reference types="node" />
// burrow for Node: types of the public API (index.js).

export type Pem = string | Buffer | Uint8Array
export type TerminateAt = 'edge' | 'agent' | 'upstream'

/** ngrok-style config; keys are snake_case as in ngrok's SDK. Unknown keys are errors. */
export interface Config {
  addr?: number | string
  /** "http" (the default, as ngrok: an https:// URL), "tls" or "tcp"; "https" means http. */
  proto?: 'http' | 'https' | 'tls' | 'tcp'
  authtoken?: string
  authtoken_from_env?: boolean
  server_addr?: string | string[]
  root_cas?: Pem
  session_ca_cert?: Pem
  session_metadata?: string
  force_new_session?: boolean
  domain?: string
  hostname?: string
  url?: string
  crt?: Pem
  key?: Pem
  mutual_tls_cas?: Pem
  terminate_at?: TerminateAt
  traffic_policy?: string
  policy?: string
  proxy_proto?: '' | '1' | '2' | 1 | 2
  metadata?: string
  forwards_to?: string
  allow_cidr?: string | string[]
  deny_cidr?: string | string[]
  remote_addr?: string
  verify_upstream_tls?: boolean
  upstream_root_cas?: Pem
  /** Share the name with other sessions' endpoints that enable pooling too; the edge spreads connections across them. */
  pooling_enabled?: boolean
  // HTTP endpoints only (ngrok's names):
  schemes?: string | string[]
  scheme?: string | string[]
  /** "user:password" (password of 8 to 128 characters), or several. */
  basic_auth?: string | string[]
  auth?: string | string[]
  /** Fraction (0..1) of 5xx responses that opens the circuit breaker. */
  circuit_breaker?: number
  compression?: boolean
  /** "Name:Value", or several. */
  request_header_add?: string | string[]
  request_header_remove?: string | string[]
  response_header_add?: string | string[]
  response_header_remove?: string | string[]
  websocket_tcp_converter?: boolean
  app_protocol?: 'http1' | 'http2'
  allow_user_agent?: string | string[]
  deny_user_agent?: string | string[]
  verify_webhook_provider?: 'github' | 'stripe' | 'slack'
  verify_webhook_secret?: string
  host_header?: string
  forwarded_headers?: boolean
  ip_restriction_allow_cidrs?: string | string[]
  ip_restriction_deny_cidrs?: string | string[]
}

/** Errors thrown by burrow carry the stable code. */
export interface BurrowError extends Error {
  code: string
  errorCode: string
}

export declare class Listener {
  id(): string
  url(): string
  proto(): string
  metadata(): string
  forwardsTo(): string
  terminateAt(): TerminateAt
  /** Starts forwarding a listener made by `listen()` to `addr` (ngrok's `Listener.forward`). */
  forward(addr: string | number): Promise<void>
  /** Lets the process exit while this listener is open. */
  unref(): this
  /** Stops the endpoint; idempotent. */
  close(): Promise<void>
  /** Resolves when the endpoint is closed. */
  join(): Promise<void>
}

export declare function forward(config: Config | number | string): Promise<Listener>
export declare function connect(config: Config | number | string): Promise<Listener>
export declare function disconnect(url?: string | null): Promise<void>
export declare function kill(): Promise<void>
export declare function listeners(): Listener[]
export declare function getListener(id: string): Listener | null
export declare function getListenerByUrl(url: string): Listener | null
export declare function authtoken(token: string): void
export declare function loggingCallback(callback: ((level: string, message: string) => void) | null, level?: string): void
export declare function consoleLog(level?: string): void

export interface EdgeConfig {
  open?: boolean
  authtokens?: Array<{ token: string, domains?: string[] }>
  domain_suffix?: string
  heartbeat_ms?: number
  handshake_timeout_ms?: number
  idle_timeout_ms?: number
  max_connections?: number
  tcp_ports?: [number, number]
  state_dir?: string
  /** Prometheus metrics at `GET /metrics` on this address, e.g. "127.0.0.1:0". */
  metrics_addr?: string
  /** The admin API on this address; needs `admin_token`. */
  admin_addr?: string
  /** The admin API's bearer token (at least 16 characters). */
  admin_token?: string
  [key: string]: unknown
}

export declare class Edge {
  static start(config?: EdgeConfig): Promise<Edge>
  readonly tunnelAddr: string
  readonly tlsAddr: string
  readonly tlsPort: number
  /** The plain-HTTP listener of http endpoints, or null when the edge has none. */
  readonly httpAddr: string | null
  /** The admin API (`host:port`), or null without `admin_addr` (and `admin_token`). */
  readonly adminAddr: string | null
  /** The Prometheus listener (`host:port`, `GET /metrics`), or null without `metrics_addr`. */
  readonly metricsAddr: string | null
  /** The edge's metrics in the OpenMetrics text format (what `GET /metrics` serves). */
  metricsText(): string
  readonly caPem: string
  options(): { server_addr: string, root_cas: string }
  /** Authenticated sessions (for tests and operators). */
  sessions(): Array<{ id: string, clientInfo: string[], metadata: string }>
  /** Sends ngrok's stop, restart or update command to a session; rejects with its refusal. */
  sendCommand(sessionId: string, command: 'stop' | 'restart' | 'update', version?: string, permitMajorVersion?: boolean, reason?: string): Promise<void>
  close(): Promise<void>
}

/** ngrok's connection counters: rates per second, duration percentiles in nanoseconds. */
export interface ConnMetrics {
  count: number
  gauge: number
  rate1: number
  rate5: number
  rate15: number
  p50: number
  p90: number
  p95: number
  p99: number
}

/** One endpoint as `Session.status()` and the agent API show it. */
export interface EndpointStatus {
  id: string
  name: string
  url: string
  proto: string
  terminate_at: string
  forwards_to: string
  metadata: string
  conns: ConnMetrics
  bytes_in: number
  bytes_out: number
  refused: number
  dial_failures: number
}

/** One recent connection. */
export interface ConnectionRecord {
  time: string
  endpoint: string
  client_addr: string
  sni: string | null
  outcome: string
  duration_ms: number | null
  bytes_in: number
  bytes_out: number
}

/** A session now (the agent API's `GET /api/status`). */
export interface SessionStatus {
  id: string
  status: 'online' | 'reconnecting' | 'closed'
  version: string
  edges: Array<{ addr: string, connected: boolean }>
  heartbeat_ms: number | null
  uptime_secs: number
  reconnects: number
  endpoints: EndpointStatus[]
  recent: ConnectionRecord[]
}

export declare class Session {
  /** The session id the edge gave. */
  id(): string
  /** The session's Prometheus metrics (text format). */
  metricsText(): string
  /** The session now: edges, endpoints with their counters, recent connections. */
  status(): SessionStatus
  /** An HTTP endpoint (an https:// URL; the edge terminates TLS). */
  httpEndpoint(): HttpListenerBuilder
  tlsEndpoint(): TlsEndpointBuilder
  tcpEndpoint(): TcpEndpointBuilder
  /** This session's open listeners, as ngrok's `session.listeners()`. */
  listeners(): Promise<Listener[]>
  /** Closes this session's listener with `id`. */
  closeListener(id: string): Promise<void>
  close(): Promise<void>
}

/** What an edge's update command asks for (ngrok's `UpdateRequest`). */
export interface UpdateRequest {
  version: string
  permitMajorVersion: boolean
}

export declare class SessionBuilder {
  authtoken(token: string): this
  authtokenFromEnv(): this
  serverAddr(addr: string | string[]): this
  rootCas(pem: Pem): this
  /** ngrok's name for `rootCas`. */
  caCert(pem: Pem): this
  metadata(metadata: string): this
  clientInfo(clientType: string, version: string, comments?: string | null): this
  /** Seconds between heartbeats. */
  heartbeatInterval(seconds: number): this
  /** Seconds a heartbeat may go unanswered before the session reconnects. */
  heartbeatTolerance(seconds: number): this
  handleHeartbeat(handler: (latency: number) => void): this
  /** Called on each tunnel loss and failed reconnect; returning false stops reconnecting. */
  handleDisconnection(handler: (addr: string, error: string) => boolean | void): this
  /** `handler(reason)`: the operator's reason, or null (ngrok's no-argument handlers work too). */
  handleStopCommand(handler: (reason?: string | null) => void): this
  handleRestartCommand(handler: () => void): this
  handleUpdateCommand(handler: (update: UpdateRequest) => void): this
  connect(): Promise<Session>
}

declare class EndpointBuilder {
  metadata(metadata: string): this
  forwardsTo(to: string): this
  termination(crt: Pem, key: Pem): this
  agentTermination(crt: Pem, key: Pem): this
  mutualTlsca(ca: Pem): this
  trafficPolicy(policy: string): this
  /** ngrok's other name for `trafficPolicy`. */
  policy(policy: string): this
  verifyUpstreamTls(verify: boolean): this
  proxyProto(version: string): this
  allowCidr(cidr: string): this
  denyCidr(cidr: string): this
  /** ngrok's pooling: share the name with other sessions' endpoints that enable it too. */
  poolingEnabled(enabled: boolean): this
  listenAndForward(url: string | number): Promise<Listener>
  /** Binds without a forwarding target; see `Listener.forward`. */
  listen(): Promise<Listener>
  /** Binds and serves `server` on it, as `listen(server, listener)`. */
  listenAndServe(server: Listenable): Promise<Listener>
}

export declare class HttpListenerBuilder extends EndpointBuilder {
  domain(domain: string): this
  /** "HTTPS" (the default) or "HTTP"; repeatable. */
  scheme(scheme: string): this
  /** Clients must send these credentials; the password takes 8 to 128 characters. */
  basicAuth(username: string, password: string): this
  allowUserAgent(regex: string): this
  denyUserAgent(regex: string): this
  appProtocol(protocol: 'http1' | 'http2'): this
  circuitBreaker(fraction: number): this
  compression(): this
  requestHeader(name: string, value: string): this
  responseHeader(name: string, value: string): this
  removeRequestHeader(name: string): this
  removeResponseHeader(name: string): this
  hostHeader(host: string): this
  webhookVerification(provider: string, secret: string): this
  websocketTcpConversion(): this
  /** Refused with UNSUPPORTED: burrow's edge reaches no identity provider. */
  oauth(provider: string, allowEmails?: string[], allowDomains?: string[], scopes?: string[], clientId?: string, clientSecret?: string): this
  /** Refused with UNSUPPORTED: burrow's edge reaches no identity provider. */
  oidc(issuerUrl: string, clientId: string, clientSecret: string, allowEmails?: string[], allowDomains?: string[], scopes?: string[]): this
}

/** What `listen()` serves: anything with net.Server's `listen(options)` (an http.Server, an Express app). */
export interface Listenable {
  listen(options: { path?: string, host?: string, port?: number }): import('net').Server
}

/** The server `listen()` made listen; `.listener` (and `.tunnel`, ngrok's name) is the endpoint. */
export type ListeningServer = import('net').Server & { listener: Listener, tunnel: Listener }

/** Serves `server` on a local socket and forwards `listener`, or a new HTTP endpoint, to it (ngrok's `listen`). */
export declare function listen(server: Listenable, listener?: Listener): Promise<ListeningServer>
/** A new HTTP endpoint to pass to `server.listen(listener)` (ngrok's `listenable`). */
export declare function listenable(): Promise<Listener & { handle: unknown }>

export declare class TlsEndpointBuilder extends EndpointBuilder {
  domain(domain: string): this
}

export declare class TcpEndpointBuilder extends EndpointBuilder {
  remoteAddr(addr: string): this
}
