// HyperSDK vSphere lab: changed block tracking for vcsim.
//
// This file is compiled INTO govmomi's package simulator with `go build -overlay`
// (see lab/vcsim/README.md). It adds what stock vcsim 0.24.2 lacks for CBT tests:
//
//   - VirtualMachine.QueryChangedDiskAreas (dispatched by name through reflection);
//   - per-disk backing.changeId "<uuid>/<seq>" while config.changeTrackingEnabled is set;
//   - snapshots that keep their own frozen copy of the disk devices;
//   - the task entity of RemoveSnapshot_Task / RevertToSnapshot_Task set to the VM;
//   - disk flat files of their real size (sparse), also after ReconfigVM grow / add.
//
// Nothing here replaces a stock method: the lab hooks in through a Registry handler
// (RegisterObject), which the Registry calls synchronously whenever an object is put
// or updated, i.e. inside the running task and under the VM's lock.
//
// The lab's stand-in for ESXi's tracking: at every change id it issues (CBT enabled,
// snapshot created, CBT reset) it records one hash per block of the disk's flat file.
// Changed areas between two change ids are the blocks whose hashes differ. A new
// tracking uuid hashes the whole disk; a snapshot's change id copies the previous
// change id's hashes and hashes again only the blocks written since (every write goes
// through the lab, which keeps them per disk) and those a resize affects.
package simulator

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// labHash is the first 16 bytes of a block's SHA-256; the zero value means "all zeros".
type labHash [16]byte

// labEpoch is the state of one disk at the moment a change id was issued.
type labEpoch struct {
	capacity int64
	hashes   []labHash
}

// labDisk is the tracking state of one disk of one VM.
type labDisk struct {
	vm       types.ManagedObjectReference
	key      int32
	file     string // datastore path of the descriptor, "[ds] dir/name.vmdk"
	flat     string // local path of the flat extent
	uuid     string // "52 xx xx xx xx xx xx xx-xx xx xx xx xx xx xx xx"
	seq      int
	epochs   map[int]*labEpoch
	capacity int64
	// pending: CBT was enabled on a running VM and waits for the next stun/unstun
	// (snapshot create or power on) to become active, as on ESXi.
	pending bool
	// dirty: the blocks the guest wrote since epochs[seq] was taken (through the flat
	// file or the redo log alike); only those are hashed again at the next change id.
	dirty map[int64]bool
	// sig: the flat file's signature when epochs[seq] was taken, kept up to date across
	// the lab's own writes; a mismatch means a write behind the lab's back and makes
	// the next hash a full one. The zero value forces a full hash too.
	sig labFileSig
}

func (d *labDisk) changeID(seq int) string { return fmt.Sprintf("%s/%d", d.uuid, seq) }

// LabConfig holds the lab's knobs.
type LabConfig struct {
	BlockSize       int64 `json:"block_size"`
	MaxChangedAreas int   `json:"max_changed_areas"` // 0: no limit per reply
	MaxEpochs       int   `json:"max_epochs"`        // change ids kept per disk
	// CBTNeedsStun: enabling CBT on a powered-on VM takes effect at the next
	// stun/unstun (snapshot create, power on); until then disks have no change id.
	CBTNeedsStun bool `json:"cbt_needs_stun"`
	// DropChangedArea simulates a CBT bug (ESXi has shipped some): every answer to a
	// query with a real change id leaves out its first changed area.
	DropChangedArea bool `json:"drop_changed_area"`
}

type labTracker struct {
	mu    sync.Mutex
	cfg   LabConfig
	disks map[string]*labDisk
	// active: VMs whose tracking runs (a disk added to such a VM is tracked at once).
	active map[types.ManagedObjectReference]bool
	// redo: while a VM has snapshots, "guest" writes go to a redo log per disk so
	// that the flat file stays as it was at the snapshot (keyed by flat file path).
	redo map[string]*labRedo
}

// Lab is the one tracker of this process (vcsim itself keeps its inventory in the
// global Map, so the lab follows the same pattern).
var Lab = &labTracker{
	cfg:    LabConfig{BlockSize: 64 * 1024, MaxEpochs: 64},
	disks:  make(map[string]*labDisk),
	active: make(map[types.ManagedObjectReference]bool),
	redo:   make(map[string]*labRedo),
}

// LabInstall registers the lab's Registry hooks; call it after the model is created
// (NewServiceInstance replaces Map) and before VMs are created.
func LabInstall(cfg LabConfig) error {
	if cfg.BlockSize <= 0 || cfg.BlockSize%512 != 0 {
		return fmt.Errorf("block size must be a positive multiple of 512, got %d", cfg.BlockSize)
	}
	if cfg.MaxEpochs < 2 {
		cfg.MaxEpochs = 2
	}
	Lab.mu.Lock()
	Lab.cfg = cfg
	Lab.mu.Unlock()
	Map.AddHandler(&labHooks{})
	return nil
}

func labDiskID(vm types.ManagedObjectReference, key int32) string {
	return vm.Value + ":" + strconv.Itoa(int(key))
}

func labNewUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[0] = 0x52
	parts := make([]string, 16)
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

var labChangeIDPattern = regexp.MustCompile(`^([0-9a-f]{2}(?: [0-9a-f]{2}){7}-[0-9a-f]{2}(?: [0-9a-f]{2}){7})/([0-9]+)$`)

// ---------------------------------------------------------------------------
// Registry hooks

type labHooks struct{}

func (*labHooks) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "HyperSDKLab", Value: "lab-hooks"}
}

func (*labHooks) PutObject(obj mo.Reference) {
	switch o := obj.(type) {
	case *VirtualMachineSnapshot:
		// CreateSnapshotTask has just copied vm.Config into the snapshot; the VM is locked.
		labFreezeSnapshot(o)
	case *Task:
		// Stock vcsim creates RemoveSnapshot_Task and RevertToSnapshot_Task with the
		// snapshot as entity; vCenter (and pyVmomi's WaitForTask) use the VM.
		if e := o.Info.Entity; e != nil && e.Type == "VirtualMachineSnapshot" {
			if snap, ok := Map.Get(*e).(*VirtualMachineSnapshot); ok {
				vmRef := snap.Vm
				o.Info.Entity = &vmRef
				if vm, ok := Map.Get(vmRef).(*VirtualMachine); ok {
					o.Info.EntityName = vm.Name
					if o.Info.DescriptionId == "VirtualMachineSnapshot.removeSnapshot" {
						// The stock task deletes the snapshot's files by layoutEx key.
						labBeforeRemoveSnapshot(vm)
					}
				}
			}
		}
	}
}

func (*labHooks) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	if t, ok := obj.(*mo.Task); ok {
		labTaskUpdated(t, changes)
		return
	}
	if _, ok := obj.(*mo.VirtualMachine); !ok {
		return
	}
	for _, c := range changes {
		if c.Name == "snapshot" && c.Val == nil {
			// The last snapshot is gone (or RemoveAllSnapshots_Task is about to remove
			// them all): consolidate the redo logs into the flat files, delete the
			// snapshots' .vmsn files and repair the file layout.
			if vm, ok := Map.Get(obj.Reference()).(*VirtualMachine); ok && vm.Config != nil && vm.Runtime.Host != nil {
				Lab.mu.Lock()
				labConsolidateLocked(vm)
				labSnapshotsGoneLocked(vm)
				Lab.mu.Unlock()
			}
			return
		}
		if strings.HasPrefix(c.Name, "snapshot.") {
			// A snapshot was created or removed: record its .vmsn, repair the layout
			// (RefreshStorageInfo renumbers it after every removal).
			if vm, ok := Map.Get(obj.Reference()).(*VirtualMachine); ok && vm.Config != nil && vm.Runtime.Host != nil {
				Lab.mu.Lock()
				labRepairLayoutLocked(vm)
				Lab.mu.Unlock()
			}
			return
		}
		poweredOn := c.Name == "runtime.powerState" && fmt.Sprint(c.Val) == string(types.VirtualMachinePowerStatePoweredOn)
		if strings.HasPrefix(c.Name, "config.hardware.device") || poweredOn {
			if vm, ok := Map.Get(obj.Reference()).(*VirtualMachine); ok {
				Lab.mu.Lock()
				if vm.Config != nil && vm.Runtime.Host != nil {
					labSyncVMLocked(vm)
					if poweredOn {
						labActivateLocked(vm)
					}
				}
				Lab.mu.Unlock()
			}
			return
		}
	}
}

func (*labHooks) RemoveObject(ref types.ManagedObjectReference) {
	if ref.Type == "VirtualMachineSnapshot" {
		Lab.mu.Lock()
		labForgetLocked(ref)
		Lab.mu.Unlock()
		return
	}
	if ref.Type != "VirtualMachine" {
		return
	}
	Lab.mu.Lock()
	defer Lab.mu.Unlock()
	labForgetLocked(ref)
	for id, d := range Lab.disks {
		if d.vm == ref {
			delete(Lab.disks, id)
		}
	}
	delete(Lab.active, ref)
}

// ---------------------------------------------------------------------------
// Disks, files and hashes

type labDiskDevice struct {
	disk    *types.VirtualDisk
	backing *types.VirtualDiskFlatVer2BackingInfo
}

func labDisks(devices []types.BaseVirtualDevice) []labDiskDevice {
	var out []labDiskDevice
	for _, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		out = append(out, labDiskDevice{disk, b})
	}
	return out
}

func labCapacity(disk *types.VirtualDisk) int64 {
	if disk.CapacityInBytes != 0 {
		return disk.CapacityInBytes
	}
	return disk.CapacityInKB * 1024
}

func labCBTEnabled(vm *VirtualMachine) bool {
	return vm.Config != nil && vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
}

// labLocalPaths returns the local descriptor and flat file of a datastore path.
func labLocalPaths(vm *VirtualMachine, fileName string) (string, string, error) {
	p, fault := parseDatastorePath(fileName)
	if fault != nil {
		return "", "", fmt.Errorf("invalid datastore path %q", fileName)
	}
	if vm.Runtime.Host == nil {
		return "", "", errors.New("VM has no host yet")
	}
	ds := vm.findDatastore(p.Datastore)
	if ds == nil {
		return "", "", fmt.Errorf("datastore %q not found", p.Datastore)
	}
	desc := path.Join(ds.Info.GetDatastoreInfo().Url, p.Path)
	return desc, vdmNames(desc)[0], nil
}

// labEnsureFiles makes the flat extent at least capacity bytes long (sparse) and
// writes a VMFS descriptor for it (so qemu-img and friends can open the disk).
func labEnsureFiles(desc, flat string, capacity int64) (bool, error) {
	st, err := os.Stat(flat)
	if err != nil {
		return false, err
	}
	grown := false
	if st.Size() < capacity {
		if err := os.Truncate(flat, capacity); err != nil {
			return false, err
		}
		grown = true
	}
	sectors := capacity / 512
	cylinders := sectors / (255 * 63)
	if cylinders < 1 {
		cylinders = 1
	}
	text := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\n"+
		"parentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW %d VMFS \"%s\"\n\n"+
		"# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n"+
		"ddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n"+
		"ddb.virtualHWVersion = \"13\"\n", sectors, path.Base(flat), cylinders)
	if old, err := os.ReadFile(desc); err == nil && string(old) == text {
		return grown, nil
	}
	return grown, os.WriteFile(desc, []byte(text), 0o600)
}

const (
	labSeekData = 3 // SEEK_DATA
	labSeekHole = 4 // SEEK_HOLE
)

// labHashFile hashes every block of the first capacity bytes of a (sparse) file.
func labHashFile(name string, capacity, bs int64) (*labEpoch, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ep := &labEpoch{capacity: capacity, hashes: make([]labHash, (capacity+bs-1)/bs)}
	if err := labHashRange(f, ep.hashes, 0, int64(len(ep.hashes)), capacity, bs); err != nil {
		return nil, err
	}
	return ep, nil
}

// labHashRange sets hashes[from:to] to the hashes of blocks from..to-1 of a (sparse)
// file cut at capacity. Holes are skipped with SEEK_DATA/SEEK_HOLE, so an almost
// empty 1 GiB disk costs a few system calls; data is read once.
func labHashRange(f *os.File, hashes []labHash, from, to, capacity, bs int64) error {
	if to > int64(len(hashes)) {
		to = int64(len(hashes))
	}
	if from >= to {
		return nil
	}
	for b := from; b < to; b++ {
		hashes[b] = labHash{} // holes
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	end := st.Size()
	if end > capacity {
		end = capacity
	}
	if end > to*bs {
		end = to * bs
	}
	sc := labNewScratch(bs)
	seekable := true
	off := from * bs
	for off < end {
		dataStart, holeStart := off, end
		if seekable {
			d, err := f.Seek(off, labSeekData)
			if err != nil {
				if errors.Is(err, syscall.ENXIO) {
					break // no data after off
				}
				seekable = false // filesystem without SEEK_DATA: read everything
			} else {
				dataStart = d
				if h, err := f.Seek(d, labSeekHole); err == nil && h < end {
					holeStart = h
				}
			}
		}
		first := dataStart / bs
		last := (holeStart + bs - 1) / bs
		for b := first; b < last && b < to; b++ {
			h, err := labHashBlock(f, sc, b, capacity, bs)
			if err != nil {
				return err
			}
			hashes[b] = h
		}
		off = last * bs
	}
	return nil
}

// labScratch is the buffers of labHashBlock: one block to read into, one of zeros.
type labScratch struct{ buf, zero []byte }

func labNewScratch(bs int64) *labScratch {
	return &labScratch{buf: make([]byte, bs), zero: make([]byte, bs)}
}

// labHashBlock hashes block b of a file cut at capacity (what the file holds of it:
// all-zero data, or none, is the zero hash).
func labHashBlock(f *os.File, sc *labScratch, b, capacity, bs int64) (labHash, error) {
	var h labHash
	m, err := f.ReadAt(sc.buf, b*bs)
	if err != nil && err != io.EOF {
		return h, err
	}
	if b*bs+int64(m) > capacity {
		m = int(capacity - b*bs)
	}
	block := sc.buf[:m]
	if !bytes.Equal(block, sc.zero[:m]) {
		sum := sha256.Sum256(block)
		copy(h[:], sum[:16])
	}
	return h, nil
}

// labRedo holds the blocks written while the VM has snapshots (a sparse side file at
// the same offsets, and which blocks it holds): the lab's stand-in for delta disks.
type labRedo struct {
	file   string
	blocks map[int64]bool
}

// labHashDisk hashes the whole disk as the guest sees it: the flat file with the redo
// log's blocks on top.
func labHashDisk(flat string, capacity, bs int64) (*labEpoch, error) {
	ep, err := labHashFile(flat, capacity, bs)
	if err != nil {
		return nil, err
	}
	redo := Lab.redo[flat]
	if redo == nil || len(redo.blocks) == 0 {
		return ep, nil
	}
	f, err := os.Open(redo.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := labNewScratch(bs)
	for b := range redo.blocks {
		if b >= int64(len(ep.hashes)) {
			continue
		}
		if ep.hashes[b], err = labHashBlock(f, sc, b, capacity, bs); err != nil {
			return nil, err
		}
	}
	return ep, nil
}

// labFileSig identifies a file's content version well enough to notice a write that
// did not come through the lab (inode, size, mtime, ctime).
type labFileSig struct {
	ino          uint64
	size         int64
	mtime, ctime syscall.Timespec
}

func labSigOf(name string) labFileSig {
	var st syscall.Stat_t
	if err := syscall.Stat(name, &st); err != nil {
		return labFileSig{}
	}
	return labFileSig{ino: uint64(st.Ino), size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
}

// labFlatChanging is called before the lab itself modifies a disk's flat file; the
// returned function, called after, records the file's new signature unless the file
// had already been changed behind the lab's back (then the next hash is a full one).
func labFlatChanging(st *labDisk) func() {
	if st == nil || st.sig == (labFileSig{}) || labSigOf(st.flat) != st.sig {
		return func() {}
	}
	return func() { st.sig = labSigOf(st.flat) }
}

// labMarkDirty records that the guest wrote [offset, offset+length) of the disk.
func labMarkDirty(st *labDisk, offset, length, bs int64) {
	if st == nil || length <= 0 {
		return
	}
	if st.dirty == nil {
		st.dirty = make(map[int64]bool)
	}
	for b := offset / bs; b <= (offset+length-1)/bs; b++ {
		st.dirty[b] = true
	}
}

// labCurrentLocked returns the block hashes of the disk as it is now, cut at capacity,
// and the flat file's signature they were taken from. The cost is proportional to what
// changed since the latest epoch: its hashes are copied, and only the blocks written
// since (st.dirty) and those a change of capacity affects are hashed again. Without a
// usable latest epoch, or if the flat file changed behind the lab's back, the whole
// disk is hashed.
func labCurrentLocked(st *labDisk, capacity int64) (*labEpoch, labFileSig, error) {
	bs := Lab.cfg.BlockSize
	sig := labSigOf(st.flat)
	base := st.epochs[st.seq]
	if base == nil || sig == (labFileSig{}) || sig != st.sig {
		ep, err := labHashDisk(st.flat, capacity, bs)
		return ep, sig, err
	}
	n := (capacity + bs - 1) / bs
	ep := &labEpoch{capacity: capacity, hashes: make([]labHash, n)}
	copy(ep.hashes, base.hashes)
	f, err := os.Open(st.flat)
	if err != nil {
		return nil, sig, err
	}
	defer f.Close()
	var rf *os.File
	redo := Lab.redo[st.flat]
	if redo != nil && len(redo.blocks) > 0 {
		if rf, err = os.Open(redo.file); err != nil {
			return nil, sig, err
		}
		defer rf.Close()
	} else {
		redo = nil
	}
	sc := labNewScratch(bs)
	// The blocks to hash again: the dirty ones, and after a change of capacity every
	// block from the one holding the smaller end on (grown blocks, the old last block
	// that was cut short, or the new last block that is cut now).
	again := make([]int64, 0, len(st.dirty))
	for b := range st.dirty {
		if b < n {
			again = append(again, b)
		}
	}
	if capacity != base.capacity {
		from := base.capacity
		if capacity < from {
			from = capacity
		}
		from /= bs
		if err := labHashRange(f, ep.hashes, from, n, capacity, bs); err != nil {
			return nil, sig, err
		}
		if redo != nil {
			for b := range redo.blocks {
				if b >= from && b < n && !st.dirty[b] {
					again = append(again, b)
				}
			}
		}
	}
	sort.Slice(again, func(i, j int) bool { return again[i] < again[j] })
	for _, b := range again {
		src := f
		if redo != nil && redo.blocks[b] {
			src = rf
		}
		if ep.hashes[b], err = labHashBlock(src, sc, b, capacity, bs); err != nil {
			return nil, sig, err
		}
	}
	return ep, sig, nil
}

// labConsolidateLocked writes the redo logs of the VM's disks into their flat files.
func labConsolidateLocked(vm *VirtualMachine) {
	bs := Lab.cfg.BlockSize
	for _, dd := range labDisks(vm.Config.Hardware.Device) {
		_, flat, err := labLocalPaths(vm, dd.backing.FileName)
		if err != nil {
			continue
		}
		redo := Lab.redo[flat]
		if redo == nil {
			continue
		}
		// The guest's view does not change, so the disk's dirty marks (which live in
		// its labDisk, not in the redo log) stay as they are.
		done := labFlatChanging(Lab.disks[labDiskID(vm.Self, dd.disk.Key)])
		err = labCopyBlocks(redo.file, flat, redo.blocks, bs)
		done()
		if err != nil {
			vm.logPrintf("lab: consolidate %s: %s", flat, err)
			continue
		}
		_ = os.Remove(redo.file)
		delete(Lab.redo, flat)
	}
}

// labCopyBlocks copies the given blocks from one file to another at the same offsets.
func labCopyBlocks(from, to string, blocks map[int64]bool, bs int64) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	buf := make([]byte, bs)
	for b := range blocks {
		m, err := src.ReadAt(buf, b*bs)
		if err != nil && err != io.EOF {
			return err
		}
		if _, err := dst.WriteAt(buf[:m], b*bs); err != nil {
			return err
		}
	}
	return dst.Sync()
}

// ---------------------------------------------------------------------------
// Keeping the VM, its disks and the tracking state in step

// labSyncVM is called whenever the VM's device list changed (create, reconfigure) and
// by the lab's own endpoints; the caller holds the VM's lock (or the VM is not yet
// visible). It is idempotent.
func labSyncVM(vm *VirtualMachine) {
	if vm.Config == nil || vm.Runtime.Host == nil {
		return // still being created
	}
	Lab.mu.Lock()
	defer Lab.mu.Unlock()
	labSyncVMLocked(vm)
}

func labSyncVMLocked(vm *VirtualMachine) {
	enabled := labCBTEnabled(vm)
	// Hardware version 7 and later can track changes (vcsim leaves this unset).
	version, _ := strconv.Atoi(strings.TrimPrefix(vm.Config.Version, "vmx-"))
	vm.Capability.ChangeTrackingSupported = types.NewBool(version >= 7)
	if version < 7 {
		enabled = false
	}
	if !enabled {
		delete(Lab.active, vm.Self)
	} else if !Lab.cfg.CBTNeedsStun || vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		Lab.active[vm.Self] = true // nothing to wait for
	}
	seen := make(map[string]bool)
	for _, dd := range labDisks(vm.Config.Hardware.Device) {
		// A client may change capacityInKB or capacityInBytes (the other one keeps the
		// old value); disks only grow, so the larger one is the new size.
		capacity := dd.disk.CapacityInKB * 1024
		if dd.disk.CapacityInBytes > capacity {
			capacity = dd.disk.CapacityInBytes
		}
		dd.disk.CapacityInBytes, dd.disk.CapacityInKB = capacity, capacity/1024
		id := labDiskID(vm.Self, dd.disk.Key)
		seen[id] = true
		st := Lab.disks[id]
		desc, flat, err := labLocalPaths(vm, dd.backing.FileName)
		if err == nil {
			var done func()
			if st != nil && st.flat == flat {
				done = labFlatChanging(st)
			}
			_, ferr := labEnsureFiles(desc, flat, capacity)
			if done != nil {
				done()
			}
			if ferr != nil {
				vm.logPrintf("lab: disk %s: %s", dd.backing.FileName, ferr)
			}
		}
		// Independent disks are not part of snapshots and have no tracking.
		independent := strings.HasPrefix(dd.backing.DiskMode, "independent")
		if !enabled || independent || err != nil {
			delete(Lab.disks, id)
			dd.backing.ChangeId = ""
			continue
		}
		if st == nil || st.file != dd.backing.FileName {
			st = &labDisk{vm: vm.Self, key: dd.disk.Key, file: dd.backing.FileName, flat: flat}
			Lab.disks[id] = st
			st.pending = !Lab.active[vm.Self]
			if !st.pending {
				labRestartLocked(st, capacity)
			}
		}
		// A grown disk keeps its tracking: blocks past the old end compare as zero.
		st.capacity = capacity
		if st.pending {
			dd.backing.ChangeId = ""
		} else {
			dd.backing.ChangeId = st.changeID(st.seq)
		}
	}
	for id, d := range Lab.disks {
		if d.vm == vm.Self && !seen[id] {
			delete(Lab.disks, id)
		}
	}
	// The file sizes in layoutEx (stock vcsim records them once, when the files are
	// still empty), the storage summary, and keys that snapshot removal can trust.
	labRepairLayoutLocked(vm)
}

// labActivateLocked starts tracking on disks whose activation waits for a stun/unstun.
func labActivateLocked(vm *VirtualMachine) {
	if labCBTEnabled(vm) {
		Lab.active[vm.Self] = true
	}
	for _, dd := range labDisks(vm.Config.Hardware.Device) {
		if st := Lab.disks[labDiskID(vm.Self, dd.disk.Key)]; st != nil && st.pending {
			st.pending = false
			labRestartLocked(st, st.capacity)
			dd.backing.ChangeId = st.changeID(st.seq)
		}
	}
}

// labRestartLocked gives a disk a new tracking uuid: every earlier change id of the
// disk becomes invalid, and the current state becomes sequence 0.
func labRestartLocked(st *labDisk, capacity int64) {
	st.uuid = labNewUUID()
	st.seq = 0
	st.capacity = capacity
	st.epochs = make(map[int]*labEpoch)
	st.dirty = nil
	st.sig = labSigOf(st.flat)
	ep, err := labHashDisk(st.flat, capacity, Lab.cfg.BlockSize)
	if err != nil {
		ep = &labEpoch{capacity: capacity, hashes: make([]labHash, (capacity+Lab.cfg.BlockSize-1)/Lab.cfg.BlockSize)}
		st.sig = labFileSig{} // not a real state of the disk: the next hash is a full one
	}
	st.epochs[0] = ep
}

// labFreezeSnapshot runs when CreateSnapshotTask puts the new snapshot: a new change
// id per tracked disk (with the disk's block hashes at this moment), and the snapshot
// gets its own copy of the devices so that its change ids stay frozen.
func labFreezeSnapshot(snap *VirtualMachineSnapshot) {
	vm, ok := Map.Get(snap.Vm).(*VirtualMachine)
	if !ok || vm.Config == nil {
		return
	}
	Lab.mu.Lock()
	defer Lab.mu.Unlock()
	labSyncVMLocked(vm)
	labActivateLocked(vm) // taking a snapshot stuns the VM
	for _, dd := range labDisks(vm.Config.Hardware.Device) {
		st := Lab.disks[labDiskID(vm.Self, dd.disk.Key)]
		if st == nil {
			continue
		}
		ep, sig, err := labCurrentLocked(st, st.capacity)
		if err != nil {
			vm.logPrintf("lab: snapshot of %s: %s", st.file, err)
			continue // the dirty marks stay for the next try
		}
		st.seq++
		st.epochs[st.seq] = ep
		st.dirty, st.sig = nil, sig
		for seq := range st.epochs {
			if seq <= st.seq-Lab.cfg.MaxEpochs {
				delete(st.epochs, seq)
			}
		}
		dd.backing.ChangeId = st.changeID(st.seq)
	}
	snap.Config.Hardware.Device = labCopyDevices(vm.Config.Hardware.Device)
	if e := vm.Config.ChangeTrackingEnabled; e != nil {
		v := *e
		snap.Config.ChangeTrackingEnabled = &v
	}
}

// labCopyDevices copies the device list; disks (and their backings) are copied by
// value so that later changes of the VM do not show through.
func labCopyDevices(devices []types.BaseVirtualDevice) []types.BaseVirtualDevice {
	out := make([]types.BaseVirtualDevice, 0, len(devices))
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok {
			c := *disk
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				bc := *b
				c.Backing = &bc
			}
			out = append(out, &c)
			continue
		}
		out = append(out, d)
	}
	return out
}

// ---------------------------------------------------------------------------
// QueryChangedDiskAreas

func labFileFault(file, msg string) *types.FileFault {
	f := &types.FileFault{File: file}
	f.FaultMessage = []types.LocalizableMessage{{Key: "hypersdk.lab.cbt", Message: msg}}
	return f
}

func labInvalidArgument(prop string) *types.InvalidArgument {
	return &types.InvalidArgument{InvalidProperty: prop}
}

// QueryChangedDiskAreas implements VirtualMachine.QueryChangedDiskAreas.
func (vm *VirtualMachine) QueryChangedDiskAreas(ctx *Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := new(methods.QueryChangedDiskAreasBody)
	res, msg, fault := labQuery(vm, req)
	if fault != nil {
		body.Fault_ = Fault(msg, fault)
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: *res}
	return body
}

type labArea struct{ start, end int64 }

func labQuery(vm *VirtualMachine, req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, string, types.BaseMethodFault) {
	devices := vm.Config.Hardware.Device
	if req.Snapshot != nil {
		snap, ok := Map.Get(*req.Snapshot).(*VirtualMachineSnapshot)
		if !ok || snap.Vm != vm.Self {
			return nil, "snapshot not found", &types.ManagedObjectNotFound{Obj: *req.Snapshot}
		}
		devices = snap.Config.Hardware.Device
	}
	var dd *labDiskDevice
	for _, d := range labDisks(devices) {
		if d.disk.Key == req.DeviceKey {
			d := d
			dd = &d
			break
		}
	}
	if dd == nil {
		return nil, "A specified parameter was not correct: deviceKey", labInvalidArgument("deviceKey")
	}
	file := dd.backing.FileName
	capacity := labCapacity(dd.disk)
	if req.StartOffset < 0 || req.StartOffset >= capacity {
		return nil, "A specified parameter was not correct: startOffset", labInvalidArgument("startOffset")
	}

	Lab.mu.Lock()
	defer Lab.mu.Unlock()
	bs := Lab.cfg.BlockSize
	if !labCBTEnabled(vm) {
		return nil, "Error caused by file " + file, labFileFault(file, "change tracking is not enabled")
	}
	st := Lab.disks[labDiskID(vm.Self, req.DeviceKey)]
	if st == nil || st.file != file {
		return nil, "Error caused by file " + file, labFileFault(file, "disk is not tracked")
	}
	if st.pending {
		return nil, "Error caused by file " + file, labFileFault(file, "change tracking is not active yet (needs a stun/unstun)")
	}

	// The state to report on: the snapshot's (frozen) or the disk as it is now.
	var target *labEpoch
	if req.Snapshot != nil {
		m := labChangeIDPattern.FindStringSubmatch(dd.backing.ChangeId)
		if m == nil || m[1] != st.uuid {
			return nil, "Error caused by file " + file, labFileFault(file, "snapshot has no valid change id")
		}
		seq, _ := strconv.Atoi(m[2])
		target = st.epochs[seq]
		if target == nil {
			return nil, "Error caused by file " + file, labFileFault(file, "snapshot's tracking data expired")
		}
	} else {
		ep, _, err := labCurrentLocked(st, capacity)
		if err != nil {
			return nil, "Error caused by file " + file, labFileFault(file, err.Error())
		}
		target = ep
	}

	var base *labEpoch // nil: all allocated (non-zero) blocks
	if req.ChangeId != "*" {
		m := labChangeIDPattern.FindStringSubmatch(req.ChangeId)
		if m == nil {
			return nil, "A specified parameter was not correct: changeId", labInvalidArgument("changeId")
		}
		seq, _ := strconv.Atoi(m[2])
		base = st.epochs[seq]
		if m[1] != st.uuid || base == nil {
			return nil, "Error caused by file " + file, labFileFault(file, "unknown change id "+req.ChangeId)
		}
	}

	// Blocks that changed (or are allocated), merged into areas, within [start, capacity).
	var areas []labArea
	nblocks := (capacity + bs - 1) / bs
	for b := req.StartOffset / bs; b < nblocks; b++ {
		var cur, old labHash
		if b < int64(len(target.hashes)) {
			cur = target.hashes[b]
		}
		if base != nil && b < int64(len(base.hashes)) {
			old = base.hashes[b]
		}
		if cur == old {
			continue
		}
		s, e := b*bs, (b+1)*bs
		if s < req.StartOffset {
			s = req.StartOffset
		}
		if e > capacity {
			e = capacity
		}
		if n := len(areas); n > 0 && areas[n-1].end == s {
			areas[n-1].end = e
		} else {
			areas = append(areas, labArea{s, e})
		}
	}

	if Lab.cfg.DropChangedArea && base != nil && req.StartOffset == 0 && len(areas) > 0 {
		areas = areas[1:]
	}
	info := &types.DiskChangeInfo{StartOffset: req.StartOffset, Length: capacity - req.StartOffset}
	if max := Lab.cfg.MaxChangedAreas; max > 0 && len(areas) > max {
		areas = areas[:max]
		info.Length = areas[max-1].end - req.StartOffset
	}
	for _, a := range areas {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a.start, Length: a.end - a.start})
	}
	return info, "", nil
}

// ---------------------------------------------------------------------------
// Knobs used by the lab's HTTP endpoints (lab_http.go)

// labFindVM resolves an inventory path ("/DC0/vm/NAME"), a VM name or a moref value.
func labFindVM(id string) *VirtualMachine {
	var byName *VirtualMachine
	for _, e := range Map.All("VirtualMachine") {
		vm, ok := e.(*VirtualMachine)
		if !ok {
			continue
		}
		if labInventoryPath(vm) == id || vm.Self.Value == id {
			return vm
		}
		if vm.Name == id && byName == nil {
			byName = vm
		}
	}
	return byName
}

func labInventoryPath(e mo.Entity) string {
	var names []string
	for cur := e; cur != nil; {
		me := cur.Entity()
		if me.Parent == nil {
			break // the root folder is not part of the path
		}
		names = append(names, me.Name)
		parent, ok := Map.Get(*me.Parent).(mo.Entity)
		if !ok {
			break
		}
		cur = parent
	}
	for i, j := 0, len(names)-1; i < j; i, j = i+1, j-1 {
		names[i], names[j] = names[j], names[i]
	}
	return "/" + strings.Join(names, "/")
}

// LabDiskInfo describes one disk for GET /lab/vms.
type LabDiskInfo struct {
	Key           int32  `json:"key"`
	Label         string `json:"label"`
	File          string `json:"file"`
	FlatFile      string `json:"flat_file"`
	FlatPath      string `json:"flat_path"`
	URLPath       string `json:"url_path"`
	CapacityBytes int64  `json:"capacity_bytes"`
	ChangeID      string `json:"change_id"`
	RedoBlocks    int    `json:"redo_blocks"` // blocks written since the first snapshot
}

// LabVMInfo describes one VM for GET /lab/vms.
type LabVMInfo struct {
	Name       string        `json:"name"`
	Path       string        `json:"path"`
	Moref      string        `json:"moref"`
	PowerState string        `json:"power_state"`
	CBTEnabled bool          `json:"cbt_enabled"`
	Snapshots  int           `json:"snapshots"`
	Disks      []LabDiskInfo `json:"disks"`
}

func labDescribeVM(vm *VirtualMachine) LabVMInfo {
	info := LabVMInfo{
		Name:       vm.Name,
		Path:       labInventoryPath(vm),
		Moref:      vm.Self.Value,
		PowerState: string(vm.Runtime.PowerState),
		CBTEnabled: labCBTEnabled(vm),
		Disks:      []LabDiskInfo{},
	}
	if vm.Snapshot != nil {
		info.Snapshots = len(allSnapshotsInTree(vm.Snapshot.RootSnapshotList))
	}
	dcName := ""
	if dc := Map.getEntityDatacenter(vm); dc != nil {
		dcName = dc.Name
	}
	for _, dd := range labDisks(vm.Config.Hardware.Device) {
		d := LabDiskInfo{
			Key:           dd.disk.Key,
			File:          dd.backing.FileName,
			CapacityBytes: labCapacity(dd.disk),
			ChangeID:      dd.backing.ChangeId,
		}
		if di := dd.disk.DeviceInfo; di != nil {
			d.Label = di.GetDescription().Label
		}
		var p object.DatastorePath
		if p.FromString(dd.backing.FileName) {
			d.FlatFile = fmt.Sprintf("[%s] %s", p.Datastore, vdmNames(p.Path)[0])
			segs := strings.Split(vdmNames(p.Path)[0], "/")
			for i := range segs {
				segs[i] = labPathEscape(segs[i])
			}
			d.URLPath = "/folder/" + strings.Join(segs, "/") + "?dcPath=" + labQueryEscape(dcName) +
				"&dsName=" + labQueryEscape(p.Datastore)
		}
		if _, flat, err := labLocalPaths(vm, dd.backing.FileName); err == nil {
			d.FlatPath = flat
			Lab.mu.Lock()
			if redo := Lab.redo[flat]; redo != nil {
				d.RedoBlocks = len(redo.blocks)
			}
			Lab.mu.Unlock()
		}
		info.Disks = append(info.Disks, d)
	}
	sort.Slice(info.Disks, func(i, j int) bool { return info.Disks[i].Key < info.Disks[j].Key })
	return info
}

// labResetCBT gives every tracked disk of the VM a new tracking uuid.
func labResetCBT(vm *VirtualMachine) []LabDiskInfo {
	Lab.mu.Lock()
	labSyncVMLocked(vm)
	for _, dd := range labDisks(vm.Config.Hardware.Device) {
		if st := Lab.disks[labDiskID(vm.Self, dd.disk.Key)]; st != nil && !st.pending {
			labRestartLocked(st, labCapacity(dd.disk))
			dd.backing.ChangeId = st.changeID(st.seq)
		}
	}
	Lab.mu.Unlock()
	return labDescribeVM(vm).Disks
}

// labWrite writes into a disk's flat file at offset; the caller holds the VM lock.
func labWrite(vm *VirtualMachine, key int32, offset int64, r io.Reader, length int64) (int64, error) {
	var dd *labDiskDevice
	for _, d := range labDisks(vm.Config.Hardware.Device) {
		if key == 0 || d.disk.Key == key {
			d := d
			dd = &d
			break
		}
	}
	if dd == nil {
		return 0, fmt.Errorf("VM %s has no disk with key %d", vm.Name, key)
	}
	capacity := labCapacity(dd.disk)
	if offset < 0 || length < 0 || offset+length > capacity {
		return 0, fmt.Errorf("write of %d bytes at %d is outside the disk (capacity %d)", length, offset, capacity)
	}
	_, flat, err := labLocalPaths(vm, dd.backing.FileName)
	if err != nil {
		return 0, err
	}
	// Writes and snapshot captures are serialised by Lab.mu (the VM lock is held too).
	Lab.mu.Lock()
	defer Lab.mu.Unlock()
	// The blocks written count for the next change id, wherever the data goes (flat
	// file or redo log): they are what the next snapshot hashes again.
	st := Lab.disks[labDiskID(vm.Self, dd.disk.Key)]
	if st != nil && st.flat != flat {
		st = nil
	}
	labMarkDirty(st, offset, length, Lab.cfg.BlockSize)
	target := flat
	if vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0 {
		// The flat file belongs to the snapshot now: write to the redo log, after
		// copying in the flat file's blocks that this write covers only partly.
		redo := Lab.redo[flat]
		if redo == nil {
			redo = &labRedo{file: flat + ".lab-redo", blocks: make(map[int64]bool)}
			f, err := os.OpenFile(redo.file, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return 0, err
			}
			_ = f.Close()
			Lab.redo[flat] = redo
		}
		bs := Lab.cfg.BlockSize
		fresh := make(map[int64]bool)
		for b := offset / bs; b*bs < offset+length; b++ {
			if !redo.blocks[b] {
				fresh[b] = true
			}
		}
		if err := labCopyBlocks(flat, redo.file, fresh, bs); err != nil {
			return 0, err
		}
		for b := range fresh {
			redo.blocks[b] = true
		}
		target = redo.file
	} else {
		defer labFlatChanging(st)() // runs after the file is written and closed
	}
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if r == nil { // zero fill
		r = io.LimitReader(labZeroReader{}, length)
	}
	buf := make([]byte, 1<<20)
	var done int64
	for done < length {
		want := int64(len(buf))
		if length-done < want {
			want = length - done
		}
		n, rerr := io.ReadFull(r, buf[:want])
		if n > 0 {
			if _, err := f.WriteAt(buf[:n], offset+done); err != nil {
				return done, err
			}
			done += int64(n)
		}
		if rerr != nil {
			if done < length {
				return done, fmt.Errorf("short body: %d of %d bytes", done, length)
			}
			break
		}
	}
	return done, f.Sync()
}

type labZeroReader struct{}

func (labZeroReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0
	}
	return len(p), nil
}
