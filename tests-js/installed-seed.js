'use strict'
// Checks the npm tarball as a user gets it: run from a fresh project outside the repo where
// it is installed (`node installed-seed.js CERT_DIR`, with seeds.js beside this file), it
// loads burrow with `require` and with `import`, runs the seed example "Cloud service" in a
// child `node` (as written apart from `require("burrow")`, the certificate paths and the
// upstream port, 8080 -> a free one so parallel runs cannot collide) and carries bytes
// through the endpoint it prints. CERT_DIR holds what scripts/seed-certs.sh makes.
const assert = require('assert')
const { spawn } = require('child_process')
const fs = require('fs')
const net = require('net')
const path = require('path')
const tls = require('tls')
const { CLOUD } = require('./seeds')

// What the tarball must hold (besides one native `bindings-node/*.node`), and nothing else.
const PACKAGE_FILES = ['README.md', 'bindings-node/native.d.ts', 'bindings-node/native.js', 'index.d.ts',
  'index.js', 'index.mjs', 'package.json']

function filesUnder (dir, prefix = '') {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory()
    ? filesUnder(path.join(dir, e.name), `${prefix}${e.name}/`)
    : [`${prefix}${e.name}`])
}

async function main (certDir) {
  const resolved = require.resolve('burrow')
  const installed = path.join(process.cwd(), 'node_modules', 'burrow')
  assert(resolved.startsWith(installed + path.sep), `burrow resolved to ${resolved}, not the installed package`)
  const files = filesUnder(installed).sort()
  const native = files.filter((f) => /^bindings-node\/[^/]+\.node$/.test(f))
  assert.strictEqual(native.length, 1, `one native addon in the package: ${files}`)
  assert.deepStrictEqual(files.filter((f) => !native.includes(f)), PACKAGE_FILES, 'the package holds these files only')
  const cjs = require('burrow')
  const esm = await import('burrow')
  assert.strictEqual(typeof cjs.forward, 'function', 'require("burrow").forward')
  assert.strictEqual(esm.forward, cjs.forward, 'import { forward } from "burrow"')
  assert.strictEqual(esm.default, cjs, 'import burrow from "burrow"')

  const echo = net.createServer((c) => { c.on('error', () => {}); c.pipe(c) })
  await new Promise((resolve) => echo.listen(0, '127.0.0.1', resolve))
  const seed = CLOUD.replace('require("@ngrok/ngrok")', 'require("burrow")')
    .replaceAll('/path/to/', certDir + '/').replace('addr: 8080', `addr: ${echo.address().port}`)
  fs.writeFileSync('seed.js', seed)
  const env = { ...process.env }
  delete env.BURROW_SERVER_ADDR
  const child = spawn(process.execPath, ['seed.js'], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  try {
    const url = await new Promise((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (d) => {
        out += d
        const m = /Ingress established at: (\S+)/.exec(out)
        if (m) resolve(m[1])
      })
      child.on('close', (code) => reject(new Error(`the seed exited (${code}) before printing its URL: ${out}`)))
    })
    const message = Buffer.from('through the installed package')
    const got = await new Promise((resolve, reject) => {
      const s = tls.connect({
        host: '127.0.0.1',
        port: Number(url.split(':').pop()),
        servername: 'app.example.com',
        ca: fs.readFileSync(path.join(certDir, 'ca.pem'))
      }, () => s.write(message))
      const chunks = []
      s.on('data', (d) => {
        chunks.push(d)
        if (Buffer.concat(chunks).length >= message.length) { s.end(); resolve(Buffer.concat(chunks)) }
      })
      s.on('error', reject)
      s.setTimeout(30000, () => reject(new Error('no echo within 30 s')))
    })
    assert(got.equals(message), `echo differs: ${got}`)
    console.log(`installed package ok: ${path.dirname(resolved)} served ${url}`)
  } finally {
    child.kill()
    echo.close()
  }
}

main(path.resolve(process.argv[2])).catch((e) => { console.error(e); process.exit(1) })
