package faultproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards TCP connections from its own loopback address to a target.
// Faults apply to every current and future connection until changed.
type Proxy struct {
	ln     net.Listener
	target atomic.Pointer[string]

	mu        sync.Mutex
	conns     map[*link]struct{}
	blackhole bool
	resume    chan struct{} // closed when the blackhole is lifted
	delay     time.Duration
	cutAfter  int64 // bytes forwarded per link before it is cut; 0: never
	closed    bool

	accepted atomic.Int64
	wg       sync.WaitGroup
}

type link struct {
	client, server net.Conn
	forwarded      atomic.Int64
	once           sync.Once
	done           chan struct{} // closed by abort
}

// New listens on 127.0.0.1:0 and forwards to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, conns: make(map[*link]struct{}), resume: make(chan struct{})}
	p.target.Store(&target)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetTarget changes where new connections go (for a server restarted on
// another port).
func (p *Proxy) SetTarget(target string) { p.target.Store(&target) }

// Accepted counts the client connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Reset aborts every open connection with a TCP RST on the client side.
func (p *Proxy) Reset() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.abort()
	}
}

// Blackhole stops (on) or restarts (off) forwarding on every connection
// without closing any: bytes are held, as on a half-open link. New
// connections are accepted but see no bytes either.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blackhole == on {
		return
	}
	p.blackhole = on
	if !on {
		close(p.resume)
		p.resume = make(chan struct{})
	}
}

// SetDelay delays every forwarded chunk by d.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// CutAfter aborts each connection once n more bytes have been forwarded on
// it in either direction (n <= 0 disables), which lands mid-frame.
func (p *Proxy) CutAfter(n int64) {
	p.mu.Lock()
	p.cutAfter = n
	for l := range p.conns {
		l.forwarded.Store(0)
	}
	p.mu.Unlock()
}

// Close stops accepting, aborts every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	if p.blackhole {
		p.blackhole = false
		close(p.resume)
		p.resume = make(chan struct{})
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.Reset()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		s, err := net.Dial("tcp", *p.target.Load())
		if err != nil {
			abort(c)
			continue
		}
		l := &link{client: c, server: s, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			l.abort()
			continue
		}
		p.conns[l] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(l, c, s)
		go p.pipe(l, s, c)
	}
}

func (p *Proxy) pipe(l *link, from, to net.Conn) {
	defer p.wg.Done()
	defer func() {
		l.abort()
		p.mu.Lock()
		delete(p.conns, l)
		p.mu.Unlock()
	}()
	buf := make([]byte, 16<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if !p.forward(l, to, buf[:n]) {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forward writes one chunk subject to the current faults; false ends the link.
func (p *Proxy) forward(l *link, to net.Conn, b []byte) bool {
	for {
		p.mu.Lock()
		hole, resume, delay, cut, closed := p.blackhole, p.resume, p.delay, p.cutAfter, p.closed
		p.mu.Unlock()
		if closed {
			return false
		}
		if hole {
			select {
			case <-resume:
				continue
			case <-l.done:
				return false
			}
		}
		if delay > 0 {
			time.Sleep(delay) // the injected fault itself, not synchronisation
		}
		if cut > 0 {
			left := cut - l.forwarded.Load()
			if left <= 0 {
				return false
			}
			if int64(len(b)) > left {
				_, _ = to.Write(b[:left])
				return false
			}
		}
		l.forwarded.Add(int64(len(b)))
		_, err := to.Write(b)
		return err == nil
	}
}

func (l *link) abort() {
	l.once.Do(func() {
		close(l.done)
		abort(l.client)
		abort(l.server)
	})
}

// abort closes c with SO_LINGER 0, so the peer sees a reset, not a clean
// close.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
