package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA signs the certificates of the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	pool *x509.CertPool
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pool: pool}
}

// issue makes a certificate for usage, valid from notBefore to notAfter;
// a server certificate names 127.0.0.1 and localhost, as clients check.
func (ca *testCA) issue(t testing.TB, name string, usage x509.ExtKeyUsage, notBefore, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func (ca *testCA) pair(t testing.TB, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	certPEM, keyPEM := ca.issue(t, name, usage, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// exportPKI is an export's TLS set-up: a CA that signs the export's
// certificate and its clients', and a stranger CA signing others.
type exportPKI struct {
	ca, stranger *testCA
	server       tls.Certificate
}

func newExportPKI(t testing.TB) *exportPKI {
	ca := newTestCA(t, "export CA")
	return &exportPKI{ca: ca, stranger: newTestCA(t, "stranger CA"), server: ca.pair(t, "export", x509.ExtKeyUsageServerAuth)}
}

// serverConfig requires a client certificate of p's CA, as the daemon does.
func (p *exportPKI) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.ca.pool,
	}
}

// clientConfig trusts p's CA and presents certs.
func (p *exportPKI) clientConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: p.ca.pool, ServerName: "localhost", Certificates: certs}
}

// clientDir writes the files qemu's tls-creds-x509 and libnbd's
// tls-certificates read: ca-cert.pem and, if given, client-cert.pem and
// client-key.pem.
func clientDir(t testing.TB, caPEM, certPEM, keyPEM []byte) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{"ca-cert.pem": caPEM, "client-cert.pem": certPEM, "client-key.pem": keyPEM}
	for name, data := range files {
		if data == nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startTLS sends NBD_OPT_STARTTLS, expects its acknowledgement and runs
// the client's side of the handshake; the raw client then speaks TLS.
func (r *rawClient) startTLS(config *tls.Config) error {
	r.t.Helper()
	r.option(optStartTLS, nil)
	if typ, msg := r.reply(optStartTLS); typ != repAck {
		r.t.Fatalf("NBD_OPT_STARTTLS: reply %#x %q, want an acknowledgement", typ, msg)
	}
	tc := tls.Client(r.nc, config)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		return err
	}
	r.nc, r.br = tc, bufio.NewReader(tc)
	return nil
}

// goExport sends NBD_OPT_GO for name and reads its replies to the
// acknowledgement, failing the test on any error reply.
func (r *rawClient) goExport(name string) {
	r.t.Helper()
	r.option(optGo, infoRequest(name))
	for {
		typ, msg := r.reply(optGo)
		if typ == repAck {
			return
		}
		if typ != repInfo {
			r.t.Fatalf("NBD_OPT_GO: reply %#x %q", typ, msg)
		}
	}
}

// TestTLSRequiredBeforeOptions: an export with TLS serves nothing before
// TLS runs, as the protocol's FORCEDTLS mode says: every option but
// NBD_OPT_STARTTLS and NBD_OPT_ABORT gets NBD_REP_ERR_TLS_REQD and
// NBD_OPT_EXPORT_NAME a hang-up, and the Device is never called.
func TestTLSRequiredBeforeOptions(t *testing.T) {
	pki := newExportPKI(t)
	dev := newMemDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev}, WithTLS(pki.serverConfig()),
		WithExportList(func() []string { return []string{"r0"} }))

	r := rawHandshake(t, s.path, clientFixedNewstyle|clientNoZeroes)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{optList, nil}, {optInfo, infoRequest("r0")}, {optGo, infoRequest("r0")}, {optGo, infoRequest("missing")},
		{optStructuredReply, nil}, {42, []byte("whatever")},
	} {
		r.option(o.opt, o.data)
		typ, msg := r.reply(o.opt)
		if typ != repErrTLSReqd || !strings.Contains(string(msg), "requires TLS") {
			t.Errorf("%s before TLS: reply %#x %q, want NBD_REP_ERR_TLS_REQD", optionName(o.opt), typ, msg)
		}
	}
	r.option(optAbort, nil)
	if typ, _ := r.reply(optAbort); typ != repAck {
		t.Errorf("NBD_OPT_ABORT before TLS: reply %#x, want an acknowledgement", typ)
	}

	r = rawHandshake(t, s.path, clientFixedNewstyle|clientNoZeroes)
	r.option(optExportName, []byte("r0"))
	r.expectClosed() // not one byte of the export's size or flags

	// TLS needs fixed newstyle: a client without it cannot get anywhere.
	r = rawHandshake(t, s.path, 0)
	r.expectClosed()

	if n := dev.callCount(); n != 0 {
		t.Fatalf("the device was called %d times before TLS", n)
	}
}

// TestTLSStartTLS negotiates TLS by hand: NBD_OPT_STARTTLS with data is
// invalid, a second one once TLS runs too, and after the handshake the
// export is served through it.
func TestTLSStartTLS(t *testing.T) {
	pki := newExportPKI(t)
	dev := newMemDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev}, WithTLS(pki.serverConfig()))
	r := rawHandshake(t, s.path, clientFixedNewstyle|clientNoZeroes)
	r.option(optStartTLS, []byte("x"))
	if typ, msg := r.reply(optStartTLS); typ != repErrInvalid || !strings.Contains(string(msg), "carries no data") {
		t.Fatalf("NBD_OPT_STARTTLS with data: reply %#x %q, want NBD_REP_ERR_INVALID", typ, msg)
	}
	if err := r.startTLS(pki.clientConfig(pki.ca.pair(t, "app", x509.ExtKeyUsageClientAuth))); err != nil {
		t.Fatalf("TLS handshake with a client certificate of the export's CA: %v", err)
	}
	r.nc.SetDeadline(time.Now().Add(10 * time.Second))
	r.option(optStartTLS, nil)
	if typ, msg := r.reply(optStartTLS); typ != repErrInvalid || !strings.Contains(string(msg), "already running") {
		t.Fatalf("second NBD_OPT_STARTTLS: reply %#x %q, want NBD_REP_ERR_INVALID", typ, msg)
	}
	r.option(optList, nil)
	if typ, _ := r.reply(optList); typ == repErrTLSReqd {
		t.Fatal("NBD_REP_ERR_TLS_REQD once TLS runs")
	}
	r.goExport("r0")
	r.flushRequest()
	if !strings.Contains(s.log.String(), "CN=app") {
		t.Errorf("the log does not name the client certificate:\n%s", s.log.String())
	}
}

// TestTLSRefusedClients: without a client certificate of the export's
// CA, or with an expired one, the TLS handshake fails and the client
// reads nothing of the export.
func TestTLSRefusedClients(t *testing.T) {
	pki := newExportPKI(t)
	dev := newMemDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev}, WithTLS(pki.serverConfig()))
	expiredCert, expiredKey := pki.ca.issue(t, "expired", x509.ExtKeyUsageClientAuth, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	expired, err := tls.X509KeyPair(expiredCert, expiredKey)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		certs []tls.Certificate
	}{
		{"no client certificate", nil},
		{"another CA's certificate", []tls.Certificate{pki.stranger.pair(t, "intruder", x509.ExtKeyUsageClientAuth)}},
		{"expired certificate", []tls.Certificate{expired}},
		{"a server certificate of the export's CA", []tls.Certificate{pki.ca.pair(t, "other-export", x509.ExtKeyUsageServerAuth)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawHandshake(t, s.path, clientFixedNewstyle|clientNoZeroes)
			if err := r.startTLS(pki.clientConfig(tc.certs...)); err != nil {
				return // refused during the handshake
			}
			// Under TLS 1.3 the client's handshake ends before the server
			// checked its certificate: the refusal comes as an alert.
			msg := binary.BigEndian.AppendUint64(nil, magicOption)
			msg = binary.BigEndian.AppendUint32(msg, optGo)
			msg = binary.BigEndian.AppendUint32(msg, uint32(len(infoRequest("r0"))))
			if _, err := r.nc.Write(append(msg, infoRequest("r0")...)); err != nil {
				return // the server hung up already
			}
			if n, err := r.br.Read(make([]byte, 1)); err == nil {
				t.Fatalf("the server answered NBD_OPT_GO (%d bytes) to a client it should refuse", n)
			}
		})
	}
	if n := dev.callCount(); n != 0 {
		t.Fatalf("the device was called %d times by refused clients", n)
	}
	if !strings.Contains(s.log.String(), "TLS handshake") {
		t.Errorf("the log does not say why:\n%s", s.log.String())
	}
}

// TestTLSDowngradeAttempts: bytes in the clear where TLS must run are
// never taken as options.
func TestTLSDowngradeAttempts(t *testing.T) {
	pki := newExportPKI(t)
	dev := newMemDevice(1 << 20)
	s := startServer(t, map[string]Device{"r0": dev}, WithTLS(pki.serverConfig()))

	t.Run("options in the clear after the acknowledgement", func(t *testing.T) {
		r := rawHandshake(t, s.path, clientFixedNewstyle|clientNoZeroes)
		r.option(optStartTLS, nil)
		if typ, _ := r.reply(optStartTLS); typ != repAck {
			t.Fatalf("reply %#x", typ)
		}
		r.option(optGo, infoRequest("r0"))
		r.expectClosed()
	})
	t.Run("an option sent with NBD_OPT_STARTTLS, before its reply", func(t *testing.T) {
		// The injection a man in the middle tries: plaintext that would
		// be read as if it had come through TLS.
		r := rawHandshake(t, s.path, clientFixedNewstyle|clientNoZeroes)
		msg := binary.BigEndian.AppendUint64(nil, magicOption)
		msg = binary.BigEndian.AppendUint32(msg, optStartTLS)
		msg = binary.BigEndian.AppendUint32(msg, 0)
		msg = binary.BigEndian.AppendUint64(msg, magicOption)
		msg = binary.BigEndian.AppendUint32(msg, optGo)
		data := infoRequest("r0")
		msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
		r.write(append(msg, data...))
		r.expectClosed()
	})
	t.Run("a plaintext client", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := Dial(ctx, s.spec, "r0")
		var exportErr *ExportError
		if !errors.As(err, &exportErr) || exportErr.Reply != repErrTLSReqd || !strings.Contains(exportErr.Message, "requires TLS") {
			t.Fatalf("plaintext Dial: %v, want NBD_REP_ERR_TLS_REQD", err)
		}
	})
	if n := dev.callCount(); n != 0 {
		t.Fatalf("the device was called %d times", n)
	}
}

// TestTLSClient: DialTLS against a TLS export, and against one without
// TLS, where it refuses to go on in the clear.
func TestTLSClient(t *testing.T) {
	pki := newExportPKI(t)
	dev := newMemDevice(1 << 20)
	l, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(func(string) (Device, error) { return dev, nil }, nil, WithTLS(pki.serverConfig()))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		<-served
	}()
	spec := "tcp:" + l.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	config := &tls.Config{RootCAs: pki.ca.pool, Certificates: []tls.Certificate{pki.ca.pair(t, "app", x509.ExtKeyUsageClientAuth)}}
	c, err := DialTLS(ctx, spec, "r0", config) // the server name is the spec's host, 127.0.0.1
	if err != nil {
		t.Fatal(err)
	}
	want := randomBytes(7, 8192)
	if err := c.WriteAt(want, 4096, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := c.ReadAt(got, 4096); err != nil || string(got) != string(want) {
		t.Fatalf("read back: %v, same %v", err, string(got) == string(want))
	}
	c.Close()

	plain := startServer(t, map[string]Device{"r0": newMemDevice(4096)})
	_, err = DialTLS(ctx, plain.spec, "r0", &tls.Config{ServerName: "localhost", RootCAs: pki.ca.pool})
	if err == nil || !strings.Contains(err.Error(), "does not start TLS") {
		t.Fatalf("DialTLS to an export without TLS: %v, want a refusal to go on in the clear", err)
	}
}

// startTCPServer serves exports on a loopback TCP port and returns the
// server and its address.
func startTCPServer(t testing.TB, exports map[string]Device, opts ...ServerOption) (*testServer, string) {
	t.Helper()
	l, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	srv := NewServer(func(name string) (Device, error) {
		if dev, ok := exports[name]; ok {
			return dev, nil
		}
		return nil, ErrNoSuchExport
	}, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), opts...)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return &testServer{Server: srv, spec: "tcp:" + l.Addr().String(), log: logs}, l.Addr().String()
}

// TestInteropTLS: libnbd's tools (nbds:// URIs) and qemu-img (tls-creds)
// read and write the export through TLS with a client certificate of the
// export's CA; without one, with another CA's, or without TLS, they read
// nothing.
func TestInteropTLS(t *testing.T) {
	nbdinfo := requireTool(t, "nbdinfo", "libnbd-bin")
	nbdcopy := requireTool(t, "nbdcopy", "libnbd-bin")
	qemuImg := requireTool(t, "qemu-img", "qemu-utils")
	pki := newExportPKI(t)
	const size = 16 << 20
	dev := newMemDevice(size)
	s, addr := startTCPServer(t, map[string]Device{"r0": dev}, WithTLS(pki.serverConfig()))

	appCert, appKey := pki.ca.issue(t, "app", x509.ExtKeyUsageClientAuth, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	good := clientDir(t, pki.ca.pem, appCert, appKey)
	uri := "nbds://" + addr + "/r0?tls-certificates=" + good

	source := writeRandomFile(t, size)
	run(t, nbdcopy, "--flush", source, uri)
	want, err := os.ReadFile(source)
	if err != nil {
		t.Fatal(err)
	}
	if string(dev.snapshot()) != string(want) {
		t.Fatal("nbdcopy over TLS: the export does not hold what was copied")
	}
	copied := filepath.Join(t.TempDir(), "copied.img")
	run(t, nbdcopy, uri, copied)
	sameFiles(t, source, copied)
	if out := run(t, nbdinfo, "--json", uri); !strings.Contains(string(out), `"TLS": true`) || !strings.Contains(string(out), `"export-size": 16777216`) {
		t.Fatalf("nbdinfo over TLS:\n%s", out)
	}

	host, port, _ := net.SplitHostPort(addr)
	qemuOpts := func(dir string) []string {
		return []string{"--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir,
			"--image-opts", "driver=nbd,server.type=inet,server.host=" + host + ",server.port=" + port + ",export=r0,tls-creds=tls0"}
	}
	// With --image-opts both images of qemu-img compare are options.
	run(t, qemuImg, "compare", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+good, "--image-opts",
		"driver=raw,file.filename="+source,
		"driver=nbd,server.type=inet,server.host="+host+",server.port="+port+",export=r0,tls-creds=tls0")

	before := dev.callCount()
	strangerCert, strangerKey := pki.stranger.issue(t, "intruder", x509.ExtKeyUsageClientAuth, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	// The intruder's clients trust both CAs, or qemu refuses its own
	// certificate before it connects.
	strangerDir := clientDir(t, append(bytes.Clone(pki.ca.pem), pki.stranger.pem...), strangerCert, strangerKey)
	refusals := []struct {
		name string
		cmd  []string
	}{
		{"nbdinfo without a client certificate", []string{nbdinfo, "nbds://" + addr + "/r0?tls-certificates=" + clientDir(t, pki.ca.pem, nil, nil)}},
		{"nbdcopy with another CA's certificate", []string{nbdcopy, "nbds://" + addr + "/r0?tls-certificates=" + strangerDir, filepath.Join(t.TempDir(), "stolen.img")}},
		{"nbdinfo without TLS", []string{nbdinfo, "nbd://" + addr + "/r0"}},
		{"qemu-img without TLS", []string{qemuImg, "info", "nbd://" + addr + "/r0"}},
		{"qemu-img with another CA's certificate", append([]string{qemuImg, "info"}, qemuOpts(strangerDir)...)},
	}
	for _, r := range refusals {
		out, err := exec.Command(r.cmd[0], r.cmd[1:]...).CombinedOutput()
		if err == nil {
			t.Errorf("%s: succeeded:\n%s", r.name, out)
			continue
		}
		t.Logf("%s: refused: %s", r.name, strings.TrimSpace(string(out)))
	}
	if n := dev.callCount() - before; n != 0 {
		t.Fatalf("refused clients reached the device %d times", n)
	}
	if !strings.Contains(s.log.String(), "TLS handshake") {
		t.Errorf("the server's log does not say why it refused:\n%s", s.log.String())
	}
}
