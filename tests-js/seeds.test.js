'use strict'
// The seed documents' JavaScript examples, run as written in a child `node` process apart
// from the `require` (and the certificate paths, which point at files made here). With no
// server address, burrow starts its embedded edge in that process.
const { spawn } = require('child_process')
const fs = require('fs')
const path = require('path')
const { pki, echoServer, tlsConnect, echoExact, tmpdir } = require('./helpers')
const { CLOUD, UPSTREAM } = require('./seeds')

const root = path.join(__dirname, '..')

/** Runs `source` with only the require and the cert paths changed; resolves the printed URL. */
function runSeed (source, certDir) {
  const dir = tmpdir()
  const file = path.join(dir, 'seed.js')
  fs.writeFileSync(file, source
    .replace('require("@ngrok/ngrok")', `require(${JSON.stringify(root)})`)
    .replaceAll('/path/to/', certDir + '/'))
  const env = { ...process.env }
  delete env.BURROW_SERVER_ADDR
  const child = spawn(process.execPath, [file], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  const url = new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      const m = /Ingress established at: (\S+)/.exec(out)
      if (m) resolve(m[1])
    })
    child.on('close', (code) => reject(new Error(`seed exited (${code}) before printing its URL: ${out}`)))
  })
  return { child, url }
}

async function on8080 (cert) {
  const server = await echoServer(cert, 8080).catch((e) => { throw new Error(`the seed forwards localhost:8080, which is busy: ${e.message}`) })
  return server
}

test.each([['cloud service (edge terminates with the given crt/key)', true], ['terminate at upstream', false]])('seed: %s', async (_name, cloud) => {
  const certs = pki()
  const cert = certs.leaf('app.example.com')
  fs.writeFileSync(path.join(certs.dir, 'app-example-com-crt.pem'), cert.crt)
  fs.writeFileSync(path.join(certs.dir, 'app-example-com-key.pem'), cert.key)
  const server = await on8080(cloud ? undefined : cert)
  const { child, url } = runSeed(cloud ? CLOUD : UPSTREAM, certs.dir)
  try {
    const u = await url
    expect(u).toMatch(/^tls:\/\/app\.example\.com:\d+$/)
    const s = await tlsConnect(Number(u.split(':').pop()), 'app.example.com', certs.ca)
    expect(s.getPeerX509Certificate().subject).toContain('app.example.com')
    await echoExact(s, Buffer.from('seed example'))
  } finally {
    child.kill()
    server.close()
  }
})
