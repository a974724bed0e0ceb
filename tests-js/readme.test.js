'use strict'
// The README's JavaScript blocks run as written (issue 14, item 9): each block marked
// `<!-- readme-run: node -->` runs as a script in a fresh node process, in a directory
// holding crt.pem/key.pem for app.example.com and a node_modules/burrow link to this
// package, against the embedded edge.
const { spawnSync } = require('child_process')
const fs = require('fs')
const path = require('path')
const { pki } = require('./helpers')

const README = path.join(__dirname, '..', 'README.md')

function marked (kind) {
  const lines = fs.readFileSync(README, 'utf8').split('\n')
  const blocks = []
  lines.forEach((line, i) => {
    if (line.trim() !== `<!-- readme-run: ${kind} -->`) return
    if (!lines[i + 1].startsWith('```')) throw new Error(`README line ${i + 1}: marker without a block`)
    let end = i + 2
    while (!lines[end].startsWith('```')) end += 1
    blocks.push([i + 2, lines.slice(i + 2, end).join('\n') + '\n'])
  })
  return blocks
}

test('the README marks its JavaScript blocks', () => {
  expect(marked('node').length).toBeGreaterThanOrEqual(1)
})

test.each(marked('node'))('README block at line %i runs', (line, code) => {
  const certs = pki()
  const dir = certs.dir
  const leaf = certs.leaf('app.example.com')
  fs.writeFileSync(path.join(dir, 'crt.pem'), leaf.crt)
  fs.writeFileSync(path.join(dir, 'key.pem'), leaf.key)
  fs.mkdirSync(path.join(dir, 'node_modules'), { recursive: true })
  fs.symlinkSync(path.join(__dirname, '..'), path.join(dir, 'node_modules', 'burrow'))
  fs.writeFileSync(path.join(dir, 'readme_block.js'), code)
  const env = { ...process.env }
  delete env.BURROW_SERVER_ADDR
  delete env.BURROW_AUTHTOKEN
  const done = spawnSync(process.execPath, ['readme_block.js'], { cwd: dir, env, encoding: 'utf8', timeout: 60000 })
  expect({ line, status: done.status, stderr: done.stderr }).toEqual({ line, status: 0, stderr: done.stderr })
  expect(done.stdout).toContain('tls://app.example.com:')
}, 90000)
