/**
 * Validation against a JSON Schema (ajv, the validator fastify itself uses), with every problem
 * told in one line that names its key: the worker's config and the pool file both go through
 * here. Schemas may carry `expected` (what a `pattern` stands for, in words), `flag` (the
 * command-line name of a setting) and `secret` (never repeat the value) beside the standard keywords.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv'
import type { TSchema } from '@sinclair/typebox'
import { nearest } from './nearest.js'

const ajv = new Ajv({ allErrors: true, strict: true, verbose: true })
ajv.addKeyword({ keyword: 'flag', schemaType: 'string' })
ajv.addKeyword({ keyword: 'expected', schemaType: 'string' })
ajv.addKeyword({ keyword: 'secret', schemaType: 'boolean' })

const compiled = new WeakMap<TSchema, ValidateFunction>()

/** Every way `value` fails `schema`, one line each; `what` names the kind of key ("configuration", "pool"). */
export function schemaProblems(schema: TSchema, value: unknown, what: string, where?: string): string[] {
  let validate = compiled.get(schema)
  if (!validate) compiled.set(schema, (validate = ajv.compile(schema)))
  if (validate(value)) return []
  const seen = new Set<string>()
  const problems: string[] = []
  for (const e of validate.errors ?? []) {
    const line = describe(e, what, where)
    const key = line.slice(0, line.indexOf(':'))
    if (seen.has(key)) continue // one problem per key: a value of the wrong type also fails its range
    seen.add(key)
    problems.push(line)
  }
  return problems
}

/** `/workers/0/name` → `workers[0].name` */
function keyOf(instancePath: string): string {
  return instancePath.slice(1).split('/').reduce((k, part) => (/^\d+$/.test(part) ? `${k}[${part}]` : k ? `${k}.${part}` : part), '')
}

function describe(e: ErrorObject, what: string, where?: string): string {
  const key = keyOf(e.instancePath)
  const schema = (e.parentSchema ?? {}) as { minimum?: number; maximum?: number; expected?: string; type?: string; items?: { type?: string }; secret?: boolean }
  // a value that may hold a password (a database URL) is never repeated in a message
  const got = schema.secret ? 'a value not shown (it may hold a password)' : JSON.stringify(e.data)
  switch (e.keyword) {
    case 'additionalProperties': {
      const extra = (e.params as { additionalProperty: string }).additionalProperty
      const near = nearest(extra, Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {}))
      return `${key ? `${key}.` : ''}${extra}: unknown ${what} key${where ? ` (in ${where})` : ''}${near ? `; did you mean ${near}?` : ''}`
    }
    case 'required': return `${key ? `${key}.` : ''}${(e.params as { missingProperty: string }).missingProperty}: required`
    case 'type': {
      const type = (e.params as { type: string }).type
      if (type === 'integer' || type === 'number') return `${key}: expected an integer, got ${got}`
      if (type === 'boolean') return `${key}: expected true or false, got ${got}`
      if (type === 'array') return `${key}: expected a list${schema.items?.type === 'string' ? ' of strings' : ''}`
      return `${key}: expected a ${type}, got ${got}`
    }
    case 'minimum': case 'maximum':
      return `${key}: ${got} is out of range [${schema.minimum ?? '-inf'}, ${schema.maximum ?? 'inf'}]`
    case 'enum': return `${key}: must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}, got ${got}`
    case 'pattern': case 'minLength': case 'maxLength': case 'minItems':
      return `${key}: expected ${schema.expected ?? e.message}, got ${got}`
    default: return `${key}: ${e.message ?? 'invalid'}`
  }
}
