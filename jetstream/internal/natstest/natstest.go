// Package natstest is test infrastructure of the jetstream module: TLS
// material for an embedded server, and users with given permissions.
package natstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/opcontrol/opcontrol/jetstream"
)

// TLS returns a server TLS configuration with a self-signed certificate
// for 127.0.0.1, and a client configuration that trusts it.
func TLS(tb testing.TB) (srv, client *tls.Config) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "jetstreamtest"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	srv = &tls.Config{MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}}
	client = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	return srv, client
}

// User is an nkey user.
type User struct {
	Seed   string
	Public string
}

// NewUser returns a fresh nkey user.
func NewUser(tb testing.TB) User {
	tb.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		tb.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		tb.Fatal(err)
	}
	return User{Seed: string(seed), Public: pub}
}

// Admin's credentials on servers set up by Auth.
const (
	AdminUser     = "admin"
	AdminPassword = "admin-password"
)

// Auth returns server options requiring authentication: an admin
// user/password with every permission, and each nkey user with its
// permissions (nil: every permission).
func Auth(users map[User]*jetstream.Permissions) func(*server.Options) {
	return func(o *server.Options) {
		o.Users = []*server.User{{Username: AdminUser, Password: AdminPassword}}
		o.Nkeys = nil
		for u, p := range users {
			nu := &server.NkeyUser{Nkey: u.Public}
			if p != nil {
				nu.Permissions = &server.Permissions{
					Publish:   &server.SubjectPermission{Allow: p.PublishAllow, Deny: p.PublishDeny},
					Subscribe: &server.SubjectPermission{Allow: p.SubscribeAllow},
				}
			}
			o.Nkeys = append(o.Nkeys, nu)
		}
	}
}
