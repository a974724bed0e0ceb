'use strict'
// Test parts: certificates made at test time with openssl, echo services, TLS clients.
const { execFileSync } = require('child_process')
const crypto = require('crypto')
const fs = require('fs')
const net = require('net')
const os = require('os')
const path = require('path')
const tls = require('tls')

function tmpdir () { return fs.mkdtempSync(path.join(os.tmpdir(), 'burrow-js-')) }

/** A CA and leaf certificates, made with the openssl CLI. */
function pki (dir = tmpdir()) {
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
  run('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.ec')
  run('req', '-x509', '-new', '-key', 'ca.ec', '-subj', '/CN=test CA', '-days', '1', '-out', 'ca.pem')
  let n = 0
  const issue = (cn, sans, client) => {
    n += 1
    run('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `l${n}.ec`)
    run('pkcs8', '-topk8', '-nocrypt', '-in', `l${n}.ec`, '-out', `l${n}.key`)
    run('req', '-new', '-key', `l${n}.key`, '-subj', `/CN=${cn}`, '-out', `l${n}.csr`)
    const ext = client ? 'extendedKeyUsage=clientAuth\n' : `subjectAltName=${sans.map((s) => `DNS:${s}`).join(',')}\n`
    fs.writeFileSync(path.join(dir, `l${n}.ext`), ext)
    run('x509', '-req', '-in', `l${n}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.ec', '-CAcreateserial', '-days', '1', '-extfile', `l${n}.ext`, '-out', `l${n}.pem`)
    return { crt: fs.readFileSync(path.join(dir, `l${n}.pem`), 'utf8'), key: fs.readFileSync(path.join(dir, `l${n}.key`), 'utf8') }
  }
  return {
    dir,
    ca: fs.readFileSync(path.join(dir, 'ca.pem'), 'utf8'),
    leaf: (...names) => issue(names[0], names, false),
    client: (cn) => issue(cn, [], true)
  }
}

/** An echo service on 127.0.0.1 (TLS when given a cert). */
function echoServer (cert, port = 0) {
  const handler = (c) => { c.on('error', () => {}); c.pipe(c) }
  const server = cert ? tls.createServer({ cert: cert.crt, key: cert.key }, handler) : net.createServer(handler)
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve(server))
  })
}

function tlsConnect (port, servername, ca, extra = {}) {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, ca, ...extra }, () => resolve(s))
    s.once('error', reject)
  })
}

/** Sends `data` and resolves once the same bytes came back (checked byte-exact). */
function echoExact (socket, data) {
  return new Promise((resolve, reject) => {
    const chunks = []
    let got = 0
    socket.on('data', (d) => {
      chunks.push(d)
      got += d.length
      if (got >= data.length) {
        const all = Buffer.concat(chunks)
        socket.end()
        if (all.length === data.length && all.equals(data)) resolve()
        else reject(new Error(`echo differs (${all.length} of ${data.length} bytes)`))
      }
    })
    socket.once('error', reject)
    socket.once('close', () => { if (got < data.length) reject(new Error(`closed after ${got} of ${data.length} bytes`)) })
    socket.write(data)
  })
}

function portOf (url) { return Number(url.split(':').pop()) }
function hostOf (url) { return url.split('://')[1].split(':')[0] }
function random (n) { return crypto.randomBytes(n) }

module.exports = { pki, echoServer, tlsConnect, echoExact, portOf, hostOf, random, tmpdir }
