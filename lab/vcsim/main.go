// Command vcsim-lab runs HyperSDK's vSphere lab: govmomi's vCenter simulator (vcsim)
// on loopback, with changed block tracking added by the files in ./simulator
// (compiled into package simulator with `go build -overlay`, see README.md).
//
// It creates one datacenter (DC0), one standalone host (DC0_H0), one datastore
// (LocalDS_0) backed by -datastore-dir, and the VMs given by -vm, writes its
// connection settings as JSON to -settings, and runs until SIGTERM or SIGINT.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

const datastoreName = "LocalDS_0"

type vmSpec struct {
	name  string
	disks []int64
}

type vmFlags []vmSpec

func (v *vmFlags) String() string { return fmt.Sprint(*v) }

// Set parses NAME:SIZE[,SIZE...], sizes in bytes with an optional K, M or G suffix.
func (v *vmFlags) Set(s string) error {
	name, sizes, ok := strings.Cut(s, ":")
	if !ok || name == "" || sizes == "" {
		return fmt.Errorf("want NAME:SIZE[,SIZE...], got %q", s)
	}
	spec := vmSpec{name: name}
	for _, part := range strings.Split(sizes, ",") {
		n, err := parseSize(part)
		if err != nil {
			return err
		}
		spec.disks = append(spec.disks, n)
	}
	*v = append(*v, spec)
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || (n*mult)%1024 != 0 {
		return 0, fmt.Errorf("invalid disk size %q (a positive multiple of 1K)", s)
	}
	return n * mult, nil
}

// settings is what the lab writes to -settings; the Python controller reads it.
type settings struct {
	URL          string `json:"url"`
	Host         string `json:"host"`
	Port         int    `json:"port"`
	Username     string `json:"username"`
	Password     string `json:"password"`
	Insecure     bool   `json:"insecure"`
	Pid          int    `json:"pid"`
	Datacenter   string `json:"datacenter"`
	Datastore    string `json:"datastore"`
	DatastoreDir string `json:"datastore_dir"`
	LabURL       string `json:"lab_url"`
	CertFile     string `json:"cert_file"`
	Thumbprint   string `json:"thumbprint"`
	BlockSize    int64  `json:"block_size"`
}

// newCertificate makes a self-signed ECDSA P-256 certificate for the loopback names,
// usable as its own CA (a client passes vcsim-cert.pem as its CA file).
func newCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	ski := sha1.Sum(pub)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"HyperSDK vcsim lab"}, CommonName: "localhost"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski[:],
		AuthorityKeyId:        ski[:],
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if err := run(); err != nil {
		log.Printf("vcsim-lab: %s", err)
		os.Exit(1)
	}
}

func run() error {
	var vms vmFlags
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: a free port)")
	settingsPath := flag.String("settings", "", "write the connection settings as JSON to this file")
	dsDir := flag.String("datastore-dir", "", "empty folder that backs datastore "+datastoreName)
	user := flag.String("username", "user", "login user name")
	pass := flag.String("password", "pass", "login password")
	blockSize := flag.Int64("block-size", 64*1024, "granularity of the lab's change tracking, bytes")
	maxAreas := flag.Int("max-changed-areas", 0, "at most this many areas per QueryChangedDiskAreas reply (0: no limit)")
	maxEpochs := flag.Int("max-epochs", 64, "change ids kept per disk")
	cbt := flag.Bool("cbt", false, "create the VMs with changeTrackingEnabled")
	needsStun := flag.Bool("cbt-needs-stun", true, "CBT enabled on a running VM activates at the next snapshot or power on")
	powerOn := flag.Bool("power-on", true, "power the VMs on")
	folderAuth := flag.Bool("folder-auth", true, "require a session cookie on /folder like vCenter")
	flag.Var(&vms, "vm", "VM to create, NAME:SIZE[,SIZE...] (repeatable; default: a set of lab VMs)")
	flag.Parse()

	if *dsDir == "" {
		return fmt.Errorf("-datastore-dir is required")
	}
	dir, err := filepath.Abs(*dsDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if entries, err := os.ReadDir(dir); err != nil {
		return err
	} else if len(entries) > 0 {
		return fmt.Errorf("datastore folder %s is not empty", dir)
	}
	if len(vms) == 0 {
		vms = vmFlags{
			{"DC0_H0_VM0", []int64{1 << 30}},
			{"DC0_H0_VM1", []int64{64 << 20}},
			{"lab-small", []int64{16 << 20}},
			{"lab-two-disks", []int64{32 << 20, 16 << 20}},
		}
	}

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 0
	model.ClusterHost = 0
	model.Host = 1
	model.Datastore = 0
	model.Machine = 0
	model.Portgroup = 0
	model.Autostart = false
	if err := model.Create(); err != nil {
		return fmt.Errorf("create model: %w", err)
	}
	defer model.Remove()

	if err := simulator.LabInstall(simulator.LabConfig{
		BlockSize: *blockSize, MaxChangedAreas: *maxAreas, MaxEpochs: *maxEpochs, CBTNeedsStun: *needsStun,
	}); err != nil {
		return err
	}

	ctx := context.Background()
	client, err := vim25.NewClient(ctx, model.Service)
	if err != nil {
		return err
	}
	if err := populate(ctx, client, dir, vms, *cbt, *powerOn); err != nil {
		return err
	}

	// A fresh certificate per start: govmomi's built-in test certificate is RSA-1024,
	// which OpenSSL's default security level refuses even as a trusted CA file.
	labCert, err := newCertificate()
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{labCert}}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	srv := model.Service.NewServer()
	defer srv.Close()
	// Serve /lab/... and check sessions on /folder/... in front of the stock mux. No
	// client knows the address before the settings are written below.
	srv.Config.Handler = simulator.LabHandler(model.Service, srv.Config.Handler, *folderAuth)

	u := *srv.URL
	u.User = nil
	port, _ := strconv.Atoi(u.Port())
	st := settings{
		URL:          u.String(),
		Host:         u.Hostname(),
		Port:         port,
		Username:     *user,
		Password:     *pass,
		Insecure:     true,
		Pid:          os.Getpid(),
		Datacenter:   "DC0",
		Datastore:    datastoreName,
		DatastoreDir: dir,
		LabURL:       fmt.Sprintf("%s://%s/lab", u.Scheme, u.Host),
		BlockSize:    *blockSize,
	}
	cert := srv.Certificate()
	sum := sha1.Sum(cert.Raw)
	hexes := make([]string, len(sum))
	for i, b := range sum {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	st.Thumbprint = strings.Join(hexes, ":")
	if *settingsPath != "" {
		certFile := filepath.Join(filepath.Dir(*settingsPath), "vcsim-cert.pem")
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
		if err := os.WriteFile(certFile, pemBytes, 0o600); err != nil {
			return err
		}
		st.CertFile = certFile
		if err := writeJSON(*settingsPath, st); err != nil {
			return err
		}
		defer os.Remove(*settingsPath)
	}
	out, _ := json.Marshal(st)
	fmt.Println(string(out))
	log.Printf("vcsim-lab listening on %s (pid %d)", st.URL, st.Pid)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Printf("vcsim-lab: %s, stopping", s)
	return nil
}

func writeJSON(name string, v interface{}) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// populate creates the datastore on our folder and the VMs, in process.
func populate(ctx context.Context, c *vim25.Client, dir string, vms vmFlags, cbt, powerOn bool) error {
	finder := find.NewFinder(c, false)
	dc, err := finder.Datacenter(ctx, "DC0")
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	host, err := finder.HostSystem(ctx, "DC0_H0")
	if err != nil {
		return err
	}
	dss, err := host.ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		return err
	}
	ds, err := dss.CreateLocalDatastore(ctx, datastoreName, dir)
	if err != nil {
		return fmt.Errorf("create datastore: %w", err)
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		return err
	}
	pool, err := host.ResourcePool(ctx)
	if err != nil {
		return err
	}
	for _, spec := range vms {
		var devices object.VirtualDeviceList
		scsi, err := devices.CreateSCSIController("pvscsi")
		if err != nil {
			return err
		}
		// Keys and labels as vSphere numbers them: SCSI controller 1000, disks 2000+,
		// first NIC 4000.
		scsi.GetVirtualDevice().Key = 1000
		devices = append(devices, scsi)
		nic := esx.EthernetCard
		nic.Key = 4000
		devices = append(devices, &nic)
		for i, size := range spec.disks {
			name := spec.name + ".vmdk"
			if i > 0 {
				name = fmt.Sprintf("%s_%d.vmdk", spec.name, i)
			}
			disk := devices.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(),
				fmt.Sprintf("[%s] %s/%s", datastoreName, spec.name, name))
			disk.Key = int32(2000 + i)
			disk.DeviceInfo = &types.Description{
				Label:   fmt.Sprintf("Hard disk %d", i+1),
				Summary: fmt.Sprintf("%d KB", size/1024),
			}
			disk.CapacityInBytes = size
			disk.CapacityInKB = size / 1024
			devices = append(devices, disk)
		}
		changes, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
		if err != nil {
			return err
		}
		config := types.VirtualMachineConfigSpec{
			Name:         spec.name,
			GuestId:      string(types.VirtualMachineGuestOsIdentifierOtherGuest64),
			Version:      "vmx-13",
			Files:        &types.VirtualMachineFileInfo{VmPathName: "[" + datastoreName + "]"},
			DeviceChange: changes,
		}
		if cbt {
			config.ChangeTrackingEnabled = types.NewBool(true)
		}
		task, err := folders.VmFolder.CreateVM(ctx, config, pool, host)
		if err != nil {
			return err
		}
		info, err := task.WaitForResult(ctx, nil)
		if err != nil {
			return fmt.Errorf("create VM %s: %w", spec.name, err)
		}
		if powerOn {
			vm := object.NewVirtualMachine(c, info.Result.(types.ManagedObjectReference))
			if task, err := vm.PowerOn(ctx); err == nil {
				_ = task.Wait(ctx)
			}
		}
	}
	return nil
}
