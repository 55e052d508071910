import t from 'tap'
import path from 'node:path'
import { clientEnv, gitClient, run, startWorker } from '../helpers/worker.js'

t.test('a git client at an hg repo, or an hg client at a git repo, is told what to run instead', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const git = gitClient(w.dir)
  const hg = (args: string[]) => run('hg', args, { cwd: w.dir, env: clientEnv(path.join(w.dir, 'client-home')) })
  const gitOnHg = await git(['clone', `${w.url}/demo-hg`, 'x1'])
  t.not(gitOnHg.code, 0)
  t.match(gitOnHg.stderr, `remote: this is a Mercurial repository: use hg clone ${w.url}/demo-hg`, 'git prints the reason')
  const gitOnHgSuffix = await git(['ls-remote', `${w.url}/demo-hg.git`])
  t.match(gitOnHgSuffix.stderr, 'this is a Mercurial repository')
  const hgOnGit = await hg(['clone', `${w.url}/demo.git`, 'x2'])
  t.not(hgOnGit.code, 0)
  t.match(hgOnGit.stderr + hgOnGit.stdout, `this is a git repository: use git clone ${w.url}/demo.git`, 'hg prints the reason')
  const hgOnGitBare = await hg(['clone', `${w.url}/team/project`, 'x3'])
  t.match(hgOnGitBare.stderr + hgOnGitBare.stdout, `use git clone ${w.url}/team/project.git`)

  // a private repo's kind is not revealed to whoever may not read it
  await w.store.setRepo('demo-hg', 'hg', false)
  await w.store.setRepo('demo.git', 'git', false)
  const anon = await git(['ls-remote', `${w.url}/demo-hg`])
  t.notMatch(anon.stderr, /Mercurial/)
  t.match(anon.stderr, /Authentication failed|could not read Username/, 'anonymous: the login prompt a missing repo gets')
  await w.addUser('eve', 'eve-password')
  const other = await git(['ls-remote', `${w.urlAs('eve', 'eve-password')}/demo-hg`])
  t.notMatch(other.stderr, /Mercurial/)
  t.match(other.stderr, /not found/)
  const hgOther = await hg(['clone', `${w.urlAs('eve', 'eve-password')}/demo.git`, 'x4'])
  t.notMatch(hgOther.stderr + hgOther.stdout, /git repository/)
  await w.addUser('ada', 'ada-password', { 'demo-hg': 'read' })
  const reader = await git(['ls-remote', `${w.urlAs('ada', 'ada-password')}/demo-hg`])
  t.match(reader.stderr, 'this is a Mercurial repository', 'a reader is told')
})
