// The linter of `npm test`: typescript-eslint's recommended rules and a few of our own.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'data/**', 'repos-fixture/**', '.tap/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      // `_name` marks what is deliberately unused (destructuring to drop a field, callback arity)
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
      eqeqeq: ['error', 'always'],
      // a variable read by closures made before its one assignment cannot be const
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
    },
  },
  // the worker logs through pino; only scripts and tools print
  { files: ['src/**/*.ts'], rules: { 'no-console': 'error' } },
)
