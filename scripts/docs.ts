/** `npm run docs`: rewrites the generated configuration table in docs/configuration.md. */
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { withCurrentTable } from '../src/config/docs.js'

const file = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'configuration.md')
const before = readFileSync(file, 'utf8')
const after = withCurrentTable(before)
if (after !== before) writeFileSync(file, after)
process.stdout.write(`${path.relative(process.cwd(), file)}: ${after === before ? 'already current' : 'table rewritten'}\n`)
