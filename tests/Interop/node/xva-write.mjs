// Writes an XVA with Xen Orchestra's @xen-orchestra/xva (a writer nobody in this project wrote), for the
// interop tests. Usage:
//   node xva-write.mjs <out.xva> <vm name> <disk1.raw> [disk2.raw ...]
// Each raw file becomes one VDI (virtual_size = the file size; XO rounds it up to 1 MiB and pads the last chunk).
// importVm() normally streams to xapi's PUT /import; here a stand-in "xapi" object receives that stream and
// writes it to <out.xva>, so the bytes are exactly what XO would upload.
import { createReadStream, createWriteStream, statSync } from 'node:fs'
import { pipeline } from 'node:stream/promises'
import { importVm } from '@xen-orchestra/xva/importVm.mjs'

const [out, vmName, ...disks] = process.argv.slice(2)
if (!out || !vmName || disks.length === 0) {
  console.error('usage: node xva-write.mjs <out.xva> <vm name> <disk.raw> [...]')
  process.exit(2)
}

const vhds = disks.map(path => ({
  footer: { currentSize: statSync(path).size },
  rawContent: async () => createReadStream(path),
}))
const vdis = disks.map((path, i) => ({
  name_label: `disk ${i}`,
  name_description: `from ${path}`,
  virtual_size: statSync(path).size,
}))

let written
const xapi = {
  task_create: async () => 'OpaqueRef:00000000-0000-4000-8000-00000000aaaa',
  putResource: (stream, path) => {
    if (path !== '/import/') throw new Error(`unexpected path ${path}`)
    written = pipeline(stream, createWriteStream(out))
    return written.then(() => 'OpaqueRef:00000000-0000-4000-8000-00000000bbbb')
  },
}
const sr = { $ref: 'OpaqueRef:00000000-0000-4000-8000-00000000cccc', uuid: '00000000-0000-4000-8000-00000000cccc', name_label: 'Local storage' }
const network = { uuid: '00000000-0000-4000-8000-00000000dddd', name_label: 'Pool-wide network' }

const vmRef = await importVm(
  {
    name_label: vmName,
    memory: 512 * 1024 * 1024,
    nCpus: 2,
    firmware: 'uefi',
    vdis,
    vhds,
    networks: [{ macAddress: '02:00:00:00:00:01', isGenerated: false }],
  },
  xapi,
  sr,
  network,
)
await written
console.log(JSON.stringify({ vmRef, vdiIds: vhds.map(v => v.ref) }))
