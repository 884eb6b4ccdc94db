// HyperSDK vSphere lab: the lab's HTTP knobs and the /folder session check.
//
// Compiled into govmomi's package simulator with `go build -overlay`.
package simulator

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/vim25/soap"
)

func labPathEscape(s string) string  { return url.PathEscape(s) }
func labQueryEscape(s string) string { return url.QueryEscape(s) }

// LabHandler wraps the simulator's mux: it serves /lab/... and, like vCenter, refuses
// datastore file access (/folder/...) without a valid session cookie when
// folderAuth is set.
func LabHandler(s *Service, next http.Handler, folderAuth bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/lab/"):
			labServe(w, r)
		case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, Map.Path):
			// Stock vcsim panics on some requests (Fetch of an unset property, such
			// as vm.snapshot without snapshots); vCenter answers them. Answer too.
			body, err := io.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			defer func() {
				if p := recover(); p != nil {
					labSOAPPanic(w, body, p)
				}
			}()
			next.ServeHTTP(w, r)
		case folderAuth && strings.HasPrefix(r.URL.Path, folderPrefix):
			c, err := r.Cookie(soap.SessionCookieName)
			if err != nil {
				http.Error(w, "no session cookie", http.StatusUnauthorized)
				return
			}
			if _, ok := s.sm.getSession(c.Value); !ok {
				http.Error(w, "invalid session", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

const labEnvelope = xml.Header + `<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ` +
	`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>%s</soapenv:Body></soapenv:Envelope>`

// labSOAPPanic answers a SOAP request whose stock handler panicked: Fetch of an unset
// property returns no value (as vCenter does); anything else a SystemError fault.
func labSOAPPanic(w http.ResponseWriter, body []byte, p interface{}) {
	name := "?"
	if method, err := UnmarshalBody(Map.typeFunc, body); err == nil {
		name = method.Name
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	if name == "Fetch" {
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, labEnvelope, `<FetchResponse xmlns="urn:vim25"></FetchResponse>`)
		return
	}
	log.Printf("vcsim-lab: panic in %s: %v", name, p)
	var msg bytes.Buffer
	_ = xml.EscapeText(&msg, []byte(fmt.Sprintf("vcsim-lab: %s failed: %v", name, p)))
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, labEnvelope, `<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>`+
		msg.String()+`</faultstring><detail><SystemErrorFault xmlns="urn:vim25" xsi:type="SystemError">`+
		`<reason>`+msg.String()+`</reason></SystemErrorFault></detail></soapenv:Fault>`)
}

type labHTTPError struct {
	status int
	msg    string
}

func (e *labHTTPError) Error() string { return e.msg }

func labErr(status int, format string, args ...interface{}) error {
	return &labHTTPError{status, fmt.Sprintf(format, args...)}
}

func labReply(w http.ResponseWriter, v interface{}, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		status := http.StatusInternalServerError
		if he, ok := err.(*labHTTPError); ok {
			status = he.status
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

func labVM(r *http.Request) (*VirtualMachine, error) {
	id := r.URL.Query().Get("vm")
	if id == "" {
		return nil, labErr(http.StatusBadRequest, "missing parameter vm")
	}
	vm := labFindVM(id)
	if vm == nil {
		return nil, labErr(http.StatusNotFound, "VM not found: %s", id)
	}
	return vm, nil
}

func labInt(r *http.Request, name string, def int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, labErr(http.StatusBadRequest, "parameter %s is not an integer: %q", name, v)
	}
	return n, nil
}

// labServe routes the lab's endpoints (documented in lab/vcsim/README.md).
func labServe(w http.ResponseWriter, r *http.Request) {
	route := r.Method + " " + r.URL.Path
	switch route {
	case "GET /lab/vms":
		var out []LabVMInfo
		for _, e := range Map.All("VirtualMachine") {
			if vm, ok := e.(*VirtualMachine); ok {
				Map.WithLock(vm, func() { out = append(out, labDescribeVM(vm)) })
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
		labReply(w, map[string]interface{}{"vms": out}, nil)
	case "GET /lab/vm":
		vm, err := labVM(r)
		if err != nil {
			labReply(w, nil, err)
			return
		}
		var info LabVMInfo
		Map.WithLock(vm, func() { info = labDescribeVM(vm) })
		labReply(w, info, nil)
	case "GET /lab/config":
		Lab.mu.Lock()
		cfg := Lab.cfg
		Lab.mu.Unlock()
		labReply(w, cfg, nil)
	case "POST /lab/config":
		var req struct {
			MaxChangedAreas *int  `json:"max_changed_areas"`
			MaxEpochs       *int  `json:"max_epochs"`
			CBTNeedsStun    *bool `json:"cbt_needs_stun"`
			DropChangedArea *bool `json:"drop_changed_area"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			labReply(w, nil, labErr(http.StatusBadRequest, "invalid JSON: %s", err))
			return
		}
		Lab.mu.Lock()
		var err error
		if req.MaxChangedAreas != nil {
			if *req.MaxChangedAreas < 0 {
				err = labErr(http.StatusBadRequest, "max_changed_areas must be >= 0")
			} else {
				Lab.cfg.MaxChangedAreas = *req.MaxChangedAreas
			}
		}
		if req.MaxEpochs != nil {
			if *req.MaxEpochs < 2 {
				err = labErr(http.StatusBadRequest, "max_epochs must be >= 2")
			} else {
				Lab.cfg.MaxEpochs = *req.MaxEpochs
			}
		}
		if req.CBTNeedsStun != nil {
			Lab.cfg.CBTNeedsStun = *req.CBTNeedsStun
		}
		if req.DropChangedArea != nil {
			Lab.cfg.DropChangedArea = *req.DropChangedArea
		}
		cfg := Lab.cfg
		Lab.mu.Unlock()
		labReply(w, cfg, err)
	case "POST /lab/reset-cbt":
		vm, err := labVM(r)
		if err != nil {
			labReply(w, nil, err)
			return
		}
		var disks []LabDiskInfo
		Map.WithLock(vm, func() {
			if !labCBTEnabled(vm) {
				err = labErr(http.StatusConflict, "change tracking is not enabled on %s", vm.Name)
				return
			}
			disks = labResetCBT(vm)
		})
		labReply(w, map[string]interface{}{"disks": disks}, err)
	case "POST /lab/write":
		vm, err := labVM(r)
		if err != nil {
			labReply(w, nil, err)
			return
		}
		key, err1 := labInt(r, "disk", 0)
		offset, err2 := labInt(r, "offset", -1)
		length, err3 := labInt(r, "length", -1)
		for _, e := range []error{err1, err2, err3} {
			if e != nil {
				labReply(w, nil, e)
				return
			}
		}
		if offset < 0 {
			labReply(w, nil, labErr(http.StatusBadRequest, "missing or negative parameter offset"))
			return
		}
		var body io.Reader = r.Body
		switch r.URL.Query().Get("fill") {
		case "zero":
			body = nil
			if length < 0 {
				labReply(w, nil, labErr(http.StatusBadRequest, "fill=zero needs length"))
				return
			}
		case "":
			if r.ContentLength < 0 {
				labReply(w, nil, labErr(http.StatusLengthRequired, "Content-Length required"))
				return
			}
			if length >= 0 && length != r.ContentLength {
				labReply(w, nil, labErr(http.StatusBadRequest, "length %d differs from body size %d", length, r.ContentLength))
				return
			}
			length = r.ContentLength
		default:
			labReply(w, nil, labErr(http.StatusBadRequest, "unknown fill %q", r.URL.Query().Get("fill")))
			return
		}
		var n int64
		Map.WithLock(vm, func() {
			labSyncVM(vm)
			n, err = labWrite(vm, int32(key), offset, body, length)
		})
		if err != nil {
			err = labErr(http.StatusBadRequest, "%s", err)
		}
		labReply(w, map[string]int64{"offset": offset, "written": n}, err)
	default:
		labReply(w, nil, labErr(http.StatusNotFound, "no such lab endpoint: %s", route))
	}
}
