import burrow from './index.js'
export const { forward, connect, disconnect, kill, listeners, getListener, getListenerByUrl, authtoken,
  loggingCallback, consoleLog, Edge, Listener, Session, SessionBuilder, TlsEndpointBuilder, TcpEndpointBuilder,
  HttpListenerBuilder, listen, listenable } = burrow
export default burrow
