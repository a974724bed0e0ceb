import burrow from './index.js'
export const { forward, connect, disconnect, kill, listeners, getListener, getListenerByUrl, authtoken,
  loggingCallback, consoleLog, Edge, Listener, Session, SessionBuilder, TlsEndpointBuilder, TcpEndpointBuilder } = burrow
export default burrow
