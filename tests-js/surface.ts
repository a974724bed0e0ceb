// Compiled by api.test.js with `tsc --noEmit --strict`: every public name, typed.
import * as http from 'http'
import * as burrow from '..'

async function main (): Promise<void> {
  const edge: burrow.Edge = await burrow.Edge.start({ open: true })
  const l: burrow.Listener = await burrow.forward({
    addr: 8080, proto: 'tls', domain: 'a.test', crt: 'pem', key: Buffer.from('pem'), terminate_at: 'agent',
    mutual_tls_cas: new Uint8Array(), traffic_policy: '', proxy_proto: '2', metadata: 'm', forwards_to: 'f',
    allow_cidr: ['10.0.0.0/8'], deny_cidr: '1.2.3.4', authtoken_from_env: true, verify_upstream_tls: false, pooling_enabled: true, ...edge.options()
  })
  const s: string = l.url() + l.id() + l.proto() + l.metadata() + l.forwardsTo() + l.terminateAt()
  l.unref()
  await l.close()
  await l.join()
  await burrow.forward(8080)
  await burrow.connect('localhost:8080')
  const all: burrow.Listener[] = burrow.listeners()
  const one: burrow.Listener | null = burrow.getListener('id') ?? burrow.getListenerByUrl('tls://x')
  burrow.authtoken('t')
  burrow.loggingCallback((level: string, message: string) => { console.log(level, message) }, 'DEBUG')
  burrow.consoleLog('INFO')
  await burrow.disconnect()
  await burrow.kill()
  const session: burrow.Session = await new burrow.SessionBuilder().authtokenFromEnv().serverAddr('h:1').rootCas('').metadata('m').connect()
  const l2 = await session.tlsEndpoint().domain('b.test').termination('', '').mutualTlsca('').trafficPolicy('').proxyProto('1').listenAndForward(80)
  const l3 = await session.tcpEndpoint().remoteAddr('h:1').allowCidr('1.0.0.0/8').denyCidr('2.0.0.0/8').poolingEnabled(false).listenAndForward('localhost:80')
  const hooked: burrow.Session = await new burrow.SessionBuilder().caCert(Buffer.from('')).clientInfo('app', '1.0')
    .clientInfo('lib', '2', 'c').heartbeatInterval(10).heartbeatTolerance(0.5)
    .handleHeartbeat((latency: number) => { console.log(latency + 1) })
    .handleDisconnection((addr: string, error: string) => addr !== error)
    .handleStopCommand(() => {}).handleRestartCommand(() => {})
    .handleUpdateCommand((u: burrow.UpdateRequest) => { console.log(u.version, u.permitMajorVersion) })
    .connect()
  const l4: burrow.Listener = await hooked.tlsEndpoint().domain('c.test').listen()
  await l4.forward('localhost:80')
  const mine: burrow.Listener[] = await hooked.listeners()
  await hooked.closeListener(l4.id())
  for (const info of edge.sessions()) await edge.sendCommand(info.id, 'update', '2', true)
  console.log(hooked.id(), mine, info0(edge))
  try {
    await burrow.forward({ addr: 1 })
  } catch (e) {
    const err = e as burrow.BurrowError
    const code: string = err.code + err.errorCode
    console.log(code, s, all, one, l2, l3)
  }
  const h: burrow.Listener = await session.httpEndpoint().domain('h.test').scheme('HTTPS').basicAuth('u', 'password')
    .allowCidr('127.0.0.0/8').denyCidr('10.0.0.0/8').allowUserAgent('^curl').denyUserAgent('bot').appProtocol('http2')
    .circuitBreaker(0.5).compression().forwardsTo('f').metadata('m').mutualTlsca('').policy('').trafficPolicy('')
    .proxyProto('2').requestHeader('a', 'b').responseHeader('c', 'd').removeRequestHeader('e').removeResponseHeader('f')
    .hostHeader('h').verifyUpstreamTls(true).webhookVerification('github', 's').websocketTcpConversion()
    .poolingEnabled(false).listenAndForward('http://localhost:80')
  const httpServer = http.createServer()
  const bound: burrow.ListeningServer = await burrow.listen(httpServer)
  const served: burrow.Listener = await session.httpEndpoint().listenAndServe(httpServer)
  const later: burrow.Listener = await burrow.listen(httpServer, h).then((b) => b.listener)
  const able = await burrow.listenable()
  httpServer.listen(able)
  const builder: burrow.HttpListenerBuilder = session.httpEndpoint().oauth('google').oidc('https://i', 'c', 's')
  const httpConfig: burrow.Config = { proto: 'http', schemes: ['HTTPS'], basic_auth: 'u:password', circuit_breaker: 0.5,
    compression: true, request_header_add: 'a:b', response_header_remove: ['c'], websocket_tcp_converter: true,
    app_protocol: 'http1', allow_user_agent: 'x', verify_webhook_provider: 'github', verify_webhook_secret: 's',
    host_header: 'h', forwarded_headers: false, ip_restriction_allow_cidrs: '127.0.0.0/8' }
  const addr: string | null = edge.httpAddr
  console.log(bound.listener.url(), served, later, builder, httpConfig, addr)
  await session.close()
  await edge.close()
}

function info0 (edge: burrow.Edge): string[] {
  return edge.sessions().map((s) => s.id + s.clientInfo.join() + s.metadata)
}

void main()
