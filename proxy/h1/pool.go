package h1

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/mtls"
)

// bufferSize is the size of each connection's read and write buffers; a message head must fit the read buffer.
const bufferSize = 16 << 10

// Pool keeps idle keep-alive connections to upstream endpoints, keyed by endpoint address and identity (a connection
// made over mesh TLS for one identity is never used for another, even at the same address). It lives outside
// configuration snapshots, so connections survive reloads.
type Pool struct {
	// Connector opens new connections. Required.
	Connector mtls.Connector
	// MaxIdlePerEndpoint bounds the idle connections kept per endpoint. Default 128.
	MaxIdlePerEndpoint int
	// IdleTimeout closes connections idle for longer. Default 90s.
	IdleTimeout time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time

	mu    sync.Mutex
	hosts map[poolKey]*hostPool
}

// poolKey identifies an endpoint: its address and the identity its connections were verified against.
type poolKey struct {
	addr     netip.AddrPort
	identity string
}

type hostPool struct {
	mu   sync.Mutex
	idle []*upstream
}

// upstream is one connection to an endpoint with its buffers.
type upstream struct {
	conn      net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	key       poolKey
	idleSince time.Time
}

// livenessAfter is how long a connection may sit idle before Get checks that the server has not closed it.
const livenessAfter = time.Second

func (p *Pool) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Pool) host(k poolKey) *hostPool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hosts == nil {
		p.hosts = map[poolKey]*hostPool{}
	}
	h := p.hosts[k]
	if h == nil {
		h = &hostPool{}
		p.hosts[k] = h
	}
	return h
}

// get returns an idle connection to ep, or a new one. reused tells which.
func (p *Pool) get(ep *balance.Endpoint) (u *upstream, reused bool, err error) {
	h := p.host(poolKey{ep.Addr, ep.Identity})
	idleTimeout := p.IdleTimeout
	if idleTimeout <= 0 {
		idleTimeout = 90 * time.Second
	}
	var now time.Time
	for {
		h.mu.Lock()
		n := len(h.idle)
		if n == 0 {
			h.mu.Unlock()
			break
		}
		u = h.idle[n-1]
		h.idle[n-1] = nil
		h.idle = h.idle[:n-1]
		h.mu.Unlock()
		if now.IsZero() {
			now = p.now()
		}
		idle := now.Sub(u.idleSince)
		if idle < idleTimeout && (idle < livenessAfter || alive(u.conn)) {
			return u, true, nil
		}
		u.conn.Close()
	}
	u, err = p.dial(ep)
	return u, false, err
}

func (p *Pool) dial(ep *balance.Endpoint) (*upstream, error) {
	c, err := p.Connector.Connect(context.Background(), ep)
	if err != nil {
		return nil, err
	}
	return &upstream{conn: c, br: bufio.NewReaderSize(c, bufferSize), bw: bufio.NewWriterSize(c, bufferSize),
		key: poolKey{ep.Addr, ep.Identity}}, nil
}

// put returns a connection whose last exchange completed cleanly.
func (p *Pool) put(u *upstream) {
	if u.br.Buffered() > 0 { // the server sent bytes nobody asked for
		u.conn.Close()
		return
	}
	max := p.MaxIdlePerEndpoint
	if max <= 0 {
		max = 128
	}
	u.idleSince = p.now()
	h := p.host(u.key)
	h.mu.Lock()
	if len(h.idle) >= max {
		h.mu.Unlock()
		u.conn.Close()
		return
	}
	h.idle = append(h.idle, u)
	h.mu.Unlock()
}

// Reap closes connections idle longer than IdleTimeout and forgets endpoints without idle connections. Call it
// periodically.
func (p *Pool) Reap() {
	p.closeIdle(false)
}

// CloseIdle closes every idle connection.
func (p *Pool) CloseIdle() { p.closeIdle(true) }

func (p *Pool) closeIdle(all bool) {
	now := p.now()
	idleTimeout := p.IdleTimeout
	if idleTimeout <= 0 {
		idleTimeout = 90 * time.Second
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, h := range p.hosts {
		h.mu.Lock()
		kept := h.idle[:0]
		for _, u := range h.idle {
			if all || now.Sub(u.idleSince) >= idleTimeout {
				u.conn.Close()
			} else {
				kept = append(kept, u)
			}
		}
		clear(h.idle[len(kept):])
		h.idle = kept
		if len(kept) == 0 {
			delete(p.hosts, k)
		}
		h.mu.Unlock()
	}
}

// Idle returns the number of idle connections (for tests and metrics).
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, h := range p.hosts {
		h.mu.Lock()
		n += len(h.idle)
		h.mu.Unlock()
	}
	return n
}
