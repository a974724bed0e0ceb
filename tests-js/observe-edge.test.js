'use strict'
// The edge admin API (issue 17) from Node, as an operator drives it: fetch + JSON with a
// bearer token against an in-process Edge; a stop with a reason reaches handleStopCommand.
const burrow = require('..')

jest.setTimeout(60000)

const AUTHTOKEN = 'js-observe-authtoken-5a1f'
const ADMIN_TOKEN = 'js-observe-admin-token-c3e8b2'

let edge
beforeAll(async () => {
  edge = await burrow.Edge.start({
    authtokens: [{ token: AUTHTOKEN, domains: ['*.js-observe.test'] }],
    admin_addr: '127.0.0.1:0',
    admin_token: ADMIN_TOKEN,
    metrics_addr: '127.0.0.1:0'
  })
})
afterAll(async () => { await burrow.kill(); await edge.close() })

const builder = () => new burrow.SessionBuilder().serverAddr(edge.tunnelAddr).caCert(Buffer.from(edge.caPem)).authtoken(AUTHTOKEN)

const bodies = []
async function call (method, path, { token = ADMIN_TOKEN, body } = {}) {
  const headers = {}
  if (token !== null) headers.authorization = `Bearer ${token}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(`http://${edge.adminAddr}${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.text()
  bodies.push(text)
  expect(res.headers.get('content-type')).toBe('application/json')
  return { status: res.status, json: JSON.parse(text) }
}

async function until (cond, what) {
  const deadline = Date.now() + 15000
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

test('the admin API refuses without the token and stops a session with a reason', async () => {
  for (const token of [null, 'wrong-token-of-enough-length']) {
    const denied = await call('GET', '/api/sessions', { token })
    expect(denied.status).toBe(401)
    expect(denied.json.error.code).toBe('AUTH_FAILED')
  }
  const reasons = []
  const bare = []
  const withReason = await builder().handleStopCommand((reason) => reasons.push(reason)).connect()
  const ngrokStyle = await builder().handleStopCommand(() => bare.push(true)).connect()

  const listed = await call('GET', '/api/sessions')
  expect(listed.status).toBe(200)
  expect(listed.json.sessions.map((s) => s.id).sort()).toEqual([withReason.id(), ngrokStyle.id()].sort())
  expect(listed.json.sessions.every((s) => s.token_name === 'authtokens[0]')).toBe(true)
  expect(Number.isNaN(Date.parse(listed.json.sessions[0].connected_since))).toBe(false)

  const stopped = await call('POST', `/api/sessions/${withReason.id()}/stop`, { body: { reason: 'node maintenance' } })
  expect(stopped.status).toBe(200)
  expect(stopped.json.stopped).toBe(true)
  await until(() => reasons.length === 1, 'the stop hook')
  expect(reasons).toEqual(['node maintenance'])

  expect((await call('POST', `/api/sessions/${ngrokStyle.id()}/stop`, { body: { reason: 'x' } })).status).toBe(200)
  await until(() => bare.length === 1, 'the no-argument stop hook')

  await edge.sendCommand(withReason.id(), 'stop', undefined, undefined, 'direct')
  await until(() => reasons.length === 2, 'the second stop')
  expect(reasons[1]).toBe('direct')

  const status = await call('GET', '/api/status')
  expect(status.json).toMatchObject({ draining: false, sessions: 2 })
  const gone = await call('POST', '/api/sessions/nope/stop')
  expect(gone.status).toBe(404)

  const metrics = await fetch(`http://${edge.metricsAddr}/metrics`)
  expect(metrics.status).toBe(200)
  const text = await metrics.text()
  expect(text).toMatch(/^burrow_edge_sessions 2$/m)
  expect(edge.metricsText()).toMatch(/^# TYPE burrow_edge_public_connections_accepted counter$/m)
  bodies.push(text)
  for (const body of bodies) {
    expect(body).not.toContain(AUTHTOKEN)
    expect(body).not.toContain(ADMIN_TOKEN)
  }
  await withReason.close()
  await ngrokStyle.close()
})
