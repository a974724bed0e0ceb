'use strict'
// The web status page in a real browser: the real CLI (`burrow http PORT --web-addr
// 127.0.0.1:0`, embedded edge) in front of a local Node HTTP server, Debian's Chromium
// driven by playwright-core, and a real HTTPS request through the tunnel that the page
// must show (the connection count, the client's address and SNI in the recent list).
// The page runs under the CSP the agent serves (Playwright's bypassCSP stays off), so a
// script or style the policy blocked would show up here as a browser error.
//
// Needs the CLI binary (`cargo build -p burrow-core`, or BURROW_BIN) and Chromium
// (scripts/setup.sh installs Debian's chromium; CHROMIUM_PATH overrides /usr/bin/chromium).
// BURROW_SCREENSHOT=1 saves docs/status-page.png.
const { spawn } = require('child_process')
const fs = require('fs')
const http = require('http')
const https = require('https')
const path = require('path')
const { chromium } = require('playwright-core')

const repo = path.join(__dirname, '..')
const TARGET = process.env.CARGO_BUILD_TARGET || 'x86_64-unknown-linux-gnu'
const BIN = process.env.BURROW_BIN || path.join(repo, 'target', TARGET, 'debug', 'burrow')
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
// Chromium on a machine with a closed network: no background fetches, no first-run work
// (Playwright adds --headless, and a fresh temporary profile for every launch()).
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync']
const DEADLINE_MS = 15000

jest.setTimeout(50000)

let upstream
let cli
let browser
const cliOutput = { stdout: '', stderr: '' }

afterAll(async () => {
  if (browser) await browser.close().catch(() => {})
  if (cli) await stop(cli)
  if (upstream) await new Promise((resolve) => upstream.close(() => resolve()))
})

/** SIGTERM, then SIGKILL if the CLI has not exited after 5 s. */
function stop (child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 5000)
    child.once('exit', () => { clearTimeout(kill); resolve() })
    child.kill('SIGTERM')
  })
}

/** Polls `probe` (async, returns a value or throws) until `ok(value)`, or fails at the deadline with the last value. */
async function until (what, probe, ok, ms = DEADLINE_MS) {
  const end = Date.now() + ms
  let last
  for (;;) {
    try { last = await probe() } catch (e) { last = e }
    if (!(last instanceof Error) && ok(last)) return last
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}; last seen: ${last instanceof Error ? last.message : JSON.stringify(last)}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** Starts the CLI and resolves with what it printed: the URL, the curl hint's parts, the web address. */
function startCli (port) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`the burrow CLI is not at ${BIN}: build it with ` +
      `\`CARGO_BUILD_TARGET=${TARGET} cargo build -p burrow-core\`, or set BURROW_BIN`)
  }
  cli = spawn(BIN, ['http', String(port), '--web-addr', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] })
  // Should jest's worker end before afterAll runs, the CLI goes with it.
  process.once('exit', () => { if (cli.exitCode === null) cli.kill('SIGKILL') })
  cli.stdout.setEncoding('utf8')
  cli.stderr.setEncoding('utf8')
  cli.stderr.on('data', (d) => { cliOutput.stderr += d })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the CLI printed no Web Interface line in ${DEADLINE_MS} ms:\n${cliOutput.stdout}\n${cliOutput.stderr}`)), DEADLINE_MS)
    cli.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`the CLI exited (${code ?? signal}) before it was ready:\n${cliOutput.stdout}\n${cliOutput.stderr}`))
    })
    cli.stdout.on('data', (d) => {
      cliOutput.stdout += d
      const out = cliOutput.stdout
      const web = /^Web Interface: (http:\/\/\S+)/m.exec(out)
      const url = /^Forwarding (https:\/\/\S+) ->/m.exec(out)
      const curl = /curl --cacert (\S+) --resolve ([^:\s]+):(\d+):(\S+) (https:\/\/\S+)/.exec(out)
      if (web && url && curl) {
        clearTimeout(timer)
        cli.removeAllListeners('exit')
        resolve({ web: web[1], url: url[1], caFile: curl[1], host: curl[2], port: Number(curl[3]), ip: curl[4], curlUrl: curl[5] })
      }
    })
  })
}

/** GET `url` through the tunnel the way the printed curl line does: the edge's CA, the name resolved to `ip`. */
function getThroughTunnel (url, ca, ip, path = '/') {
  const lookup = (hostname, options, callback) => options && options.all
    ? callback(null, [{ address: ip, family: 4 }])
    : callback(null, ip, 4)
  return new Promise((resolve, reject) => {
    const req = https.get(new URL(path, url), { ca, lookup, agent: false }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString(), clientPort }))
      res.on('error', reject)
    })
    let clientPort
    req.on('socket', (s) => s.once('connect', () => { clientPort = s.localPort }))
    req.on('error', reject)
  })
}

/** Each row of the table `id` as { column: text }. */
function rows (page, id) {
  return page.$$eval(`#${id} tbody tr`, (trs) => trs.map((tr) =>
    Object.fromEntries([...tr.querySelectorAll('td')].map((td) => [td.dataset.col, td.textContent]))))
}

test('the status page shows the endpoint, then a connection made through the tunnel', async () => {
  upstream = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain')
    res.end(`hello from upstream: ${req.method} ${req.url}\n`.repeat(req.url === '/big' ? 2000 : 1))
  })
  await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve))
  const printed = await startCli(upstream.address().port)
  expect(new URL(printed.curlUrl).origin).toBe(new URL(printed.url).origin)
  const ca = fs.readFileSync(printed.caFile)

  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`Chromium is not at ${CHROMIUM}: run scripts/setup.sh (apt-get install chromium chromium-driver), or set CHROMIUM_PATH`)
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS })
  const page = await browser.newPage({ viewport: { width: 1180, height: 820 } })
  const problems = []
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`))
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`) })
  const res = await page.goto(printed.web + '/')
  expect(res.status()).toBe(200)
  expect(res.headers()['content-security-policy']).toContain("default-src 'none'")

  // The endpoint, before any traffic: its URL and 0 connections.
  const [before] = await until('the endpoint row', () => rows(page, 'endpoints'), (r) => r.length === 1)
  expect(before.url).toBe(printed.url)
  expect(before.count).toBe('0')
  expect(before.open).toBe('0')
  expect(before.forwards_to).toContain(String(upstream.address().port))
  expect(await page.textContent('#session-status')).toBe('online')
  expect(await page.isVisible('#recent-empty')).toBe(true)

  // A real request through the tunnel.
  const got = await getThroughTunnel(printed.url, ca, printed.ip, '/through-the-tunnel')
  expect(got.status).toBe(200)
  expect(got.body).toBe('hello from upstream: GET /through-the-tunnel\n')
  const client = `127.0.0.1:${got.clientPort}`

  const [after] = await until('1 connection on the endpoint', () => rows(page, 'endpoints'), (r) => r[0] && r[0].count === '1' && r[0].open === '0')
  expect(after.bytes_out).not.toBe('0 B')
  const recent = await until(`${client} in the recent connections`, () => rows(page, 'recent'), (r) => r.some((c) => c.client === client && c.outcome === 'closed'))
  const row = recent.find((c) => c.client === client)
  expect(row.sni).toBe(printed.host)
  expect(row.endpoint).toBe(printed.url)
  expect(row.duration).toMatch(/\d (ms|s)$/)
  expect(await page.isVisible('#recent-empty')).toBe(false)
  // The throughput chart saw the response's bytes go out.
  await until('a throughput reading', () => page.textContent('#rate-out'), (t) => /\/s$/.test(t))

  if (process.env.BURROW_SCREENSHOT === '1') {
    // A little more traffic so the chart has a shape, then the picture for the README.
    for (const p of ['/big', '/', '/big', '/big']) {
      await getThroughTunnel(printed.url, ca, printed.ip, p)
      await new Promise((resolve) => setTimeout(resolve, 1500))
    }
    await until('5 connections', () => rows(page, 'endpoints'), (r) => r[0] && r[0].count === '5')
    await new Promise((resolve) => setTimeout(resolve, 1500)) // one more poll draws the last sample
    await page.screenshot({ path: path.join(repo, 'docs', 'status-page.png'), fullPage: true })
  }
  expect(problems).toEqual([])
})

test('a #token= fragment is sent as a bearer token, never in the URL, and leaves the address bar', async () => {
  expect(browser).toBeDefined()
  const { web } = await startCliIfNeeded()
  const page = await browser.newPage()
  const seen = []
  page.on('request', (r) => { if (r.url().includes('api/')) seen.push({ url: r.url(), auth: r.headers().authorization }) })
  await page.goto(`${web}/#token=s3cret-t0ken`)
  await until('an api/status request', async () => seen.length, (n) => n >= 1)
  expect(seen[0].url).toBe(`${web}/api/status`)
  expect(seen[0].auth).toBe('Bearer s3cret-t0ken')
  expect(seen.every((r) => !r.url.includes('s3cret'))).toBe(true)
  expect(await page.evaluate(() => location.href)).toBe(`${web}/`)
  await page.close()
})

/** The CLI the first test started (this file's tests share it). */
async function startCliIfNeeded () {
  const web = /^Web Interface: (http:\/\/\S+)/m.exec(cliOutput.stdout)
  if (!web) throw new Error('the first test did not start the CLI')
  return { web: web[1] }
}
