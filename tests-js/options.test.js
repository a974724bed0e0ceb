'use strict'
// The shared option table (tests-shared/option_cases.json), through JavaScript's types.
// The Rust and Python suites run the same cases: Node and Python must parse the same
// options into the same endpoint, or refuse them with the same code.
const fs = require('fs')
const path = require('path')
require('..') // the package loads the addon the way users get it
const native = require('../bindings-node/native.js')
const { pki } = require('./helpers')

const table = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'tests-shared', 'option_cases.json'), 'utf8'))
let certs
const leaves = new Map()
beforeAll(() => { certs = pki() })

function leaf (name) {
  if (!leaves.has(name)) leaves.set(name, certs.leaf(name))
  return leaves.get(name)
}

/** A table value as a Node user would pass it (Buffer for PEM bytes). */
function value (v) {
  if (Array.isArray(v)) return v.map(value)
  if (typeof v !== 'string' || !v.startsWith('$')) return v
  const [kind, name] = v.split(/:(.*)/)
  if (kind === '$ca') return Buffer.from(certs.ca)
  if (kind === '$not-utf8') return Buffer.from([0xff, 0xfe, 0x2d, 0x2d])
  const l = leaf(name)
  return { $crt: Buffer.from(l.crt), $key: Buffer.from(l.key), '$crt-text': l.crt, '$key-text': l.key }[kind]
}

function lookup (tree, p) {
  return p.split('.').reduce((t, k) => (t !== null && typeof t === 'object' ? t[k] : undefined), tree)
}

function coded (fn) {
  try {
    fn()
  } catch (e) {
    const m = /^\[([A-Z_]+)\] ([\s\S]*)$/.exec(e.message)
    return m ? { code: m[1], message: m[2] } : { code: e.code, message: e.message }
  }
  return null
}

test.each(table.cases.map((c) => [c.name, c]))('%s', (_name, c) => {
  const options = Object.fromEntries(Object.entries(c.options).map(([k, v]) => [k, value(v)]))
  const scope = c.scope ?? 'forward'
  if (c.error) {
    const err = coded(() => native.parseOptions(options, scope))
    expect(err).not.toBeNull()
    expect(err.code).toBe(c.error)
    expect(err.message).toContain(c.message ?? '')
  } else {
    const described = JSON.parse(native.parseOptions(options, scope).describe())
    for (const [p, want] of Object.entries(c.expect)) expect([p, lookup(described, p) ?? null]).toEqual([p, want])
  }
})
