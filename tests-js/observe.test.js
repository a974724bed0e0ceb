'use strict'
// What a session shows of itself: metricsText() in Prometheus text format and status()
// with ngrok's connection counters, after real connections through the tunnel.
const burrow = require('..')
const net = require('net')
const { echoServer, echoExact, portOf } = require('./helpers')

let edge
let server
beforeAll(async () => { edge = await burrow.Edge.start({ open: true }); server = await echoServer() })
afterAll(async () => { server.close(); await edge.close() })

/** The value of `name` labelled endpoint="url" in Prometheus text. */
function sample (text, name, url) {
  const prefix = `${name}{endpoint="${url}"} `
  const line = text.split('\n').find((l) => l.startsWith(prefix))
  if (!line) throw new Error(`no sample ${name} for ${url} in:\n${text}`)
  return Number(line.slice(prefix.length))
}

async function until (cond, what) {
  const deadline = Date.now() + 10000
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

test('metricsText() and status() count connections and bytes', async () => {
  const session = await new burrow.SessionBuilder().serverAddr(edge.tunnelAddr).caCert(Buffer.from(edge.caPem)).connect()
  const upstream = `tcp://127.0.0.1:${server.address().port}`
  const listener = await session.tcpEndpoint().listenAndForward(upstream)
  const url = listener.url()
  expect(sample(session.metricsText(), 'burrow_agent_connections_total', url)).toBe(0)
  for (const size of [10, 5000]) {
    const socket = net.connect(portOf(url), '127.0.0.1')
    await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
    await echoExact(socket, Buffer.alloc(size, 'x'))
    socket.end()
  }
  await until(() => {
    const ep = session.status().endpoints[0]
    return ep.conns.count === 2 && ep.conns.gauge === 0
  }, 'both connections to end')
  const text = session.metricsText()
  expect(sample(text, 'burrow_agent_connections_total', url)).toBe(2)
  expect(sample(text, 'burrow_agent_bytes_in_total', url)).toBe(5010)
  expect(sample(text, 'burrow_agent_bytes_out_total', url)).toBe(5010)
  const status = session.status()
  expect(status.status).toBe('online')
  expect(status.id).toBe(session.id())
  const ep = status.endpoints[0]
  expect(ep.url).toBe(url)
  expect(ep.forwards_to).toBe(upstream)
  expect(ep.conns.rate1).toBeGreaterThan(0)
  expect(status.recent.map((r) => r.outcome)).toEqual(['closed', 'closed'])
  await session.close()
  expect(session.status().status).toBe('closed')
})
