// Drives the simulator's HTTP data plane with Xen Orchestra's own XAPI client (xen-api on npm), as XO backups do:
// GET /export/ of a halted VM with a task (getResource), saved to a file, then PUT /import/ of that XVA as a
// stream with a known length (putResource probes for a 302 with an empty PUT first), and
// GET /export_raw_vdi/ of one disk in raw format.
// Usage: node dataplane-xo.mjs <url> <user> <password> <vm name_label> <xva output path>
// Prints one JSON object on stdout; exits non-zero on any failure.
import { Xapi } from 'xen-api'
import { Readable } from 'node:stream'
import { writeFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'

const [url, user, password, vmName, xvaPath] = process.argv.slice(2)
if (xvaPath === undefined) {
  console.error('usage: node dataplane-xo.mjs <url> <user> <password> <vm name_label> <xva output path>')
  process.exit(2)
}

const xapi = new Xapi({ url, auth: { user, password }, allowUnauthorized: true, eventPollDelay: 500 })
const timer = setTimeout(() => {
  console.error('timed out')
  process.exit(3)
}, 90_000)

async function readAll(body) {
  const chunks = []
  for await (const c of body) chunks.push(c)
  return Buffer.concat(chunks)
}

try {
  await xapi.connect()
  xapi.watchEvents()
  const out = {}
  const [vm] = await xapi.call('VM.get_by_name_label', vmName)
  out.vmRef = vm

  const exportResponse = await xapi.getResource('/export/', { query: { ref: vm, use_compression: 'zstd' }, task: true })
  const xva = await readAll(exportResponse.body)
  await exportResponse.task
  out.exportBytes = xva.length
  await writeFile(xvaPath, xva)

  const pool = xapi.pool
  const stream = Readable.from([xva])
  stream.length = xva.length
  const result = await xapi.putResource(stream, '/import/', { query: { sr_id: pool.default_SR }, task: true })
  out.importResult = result

  const vbds = await Promise.all((await xapi.call('VM.get_VBDs', vm)).map(ref => xapi.getRecord('VBD', ref)))
  const disk = vbds.filter(v => v.type === 'Disk').sort((a, b) => a.userdevice - b.userdevice)[0].VDI
  const raw = await xapi.getResource('/export_raw_vdi/', { query: { vdi: disk, format: 'raw' }, task: true })
  const rawBytes = await readAll(raw.body)
  await raw.task
  out.rawDiskRef = disk
  out.rawBytes = rawBytes.length
  out.rawSha256 = createHash('sha256').update(rawBytes).digest('hex')

  console.log(JSON.stringify(out))
  clearTimeout(timer)
  await xapi.disconnect()
  process.exit(0)
} catch (error) {
  console.error(error?.stack ?? String(error))
  process.exit(1)
}
