'use strict'
const burrow = require('..')
const { pki, echoServer, tlsConnect, echoExact, random } = require('./helpers')

let a, b, server
beforeAll(async () => { a = await burrow.Edge.start({ open: true }); b = await burrow.Edge.start({ open: true }) })
afterEach(async () => { await burrow.kill(); if (server) server.close() })
afterAll(async () => { await a.close(); await b.close() })

/** Echoes `data` through `edge` with SNI `name`, retrying while that edge does not know the name yet. */
async function echoVia (edge, name, ca, data) {
  const deadline = Date.now() + 10000
  for (;;) {
    try {
      const s = await tlsConnect(edge.tlsPort, name, ca)
      return await echoExact(s, data)
    } catch (e) {
      if (Date.now() > deadline) throw e
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
}

test('server_addr as a list: the URL answers through every edge', async () => {
  const certs = pki()
  server = await echoServer(certs.leaf('app.multi.test'))
  const l = await burrow.forward({
    addr: server.address().port,
    proto: 'tls',
    domain: 'app.multi.test',
    server_addr: [a.options().server_addr, b.options().server_addr],
    root_cas: a.caPem + '\n' + b.caPem
  })
  expect(l.url()).toBe(`tls://app.multi.test:${a.tlsPort}`)
  const data = random(1024 * 1024)
  await echoVia(a, 'app.multi.test', certs.ca, data)
  await echoVia(b, 'app.multi.test', certs.ca, data)
  await l.close()
})
