package worker

import (
	"net"
	"sync"
)

// connMux owns the worker's data-plane listener for its whole life and
// hands accepted connections to the listener of the current generation,
// so the advertised port survives engines that close their listener.
type connMux struct {
	base  net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnMux(base net.Listener) *connMux {
	m := &connMux{base: base, conns: make(chan net.Conn), done: make(chan struct{})}
	go m.loop()
	return m
}

func (m *connMux) loop() {
	for {
		c, err := m.base.Accept()
		if err != nil {
			m.close()
			return
		}
		select {
		case m.conns <- c:
		case <-m.done:
			c.Close()
			return
		}
	}
}

func (m *connMux) close() {
	m.once.Do(func() {
		close(m.done)
		m.base.Close()
	})
}

// listener returns a listener for one generation.
func (m *connMux) listener() *genListener {
	return &genListener{mux: m, closed: make(chan struct{})}
}

// genListener is one generation's view of the data-plane listener.
type genListener struct {
	mux    *connMux
	closed chan struct{}
	once   sync.Once
}

func (l *genListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.mux.conns:
		return c, nil
	case <-l.closed:
	case <-l.mux.done:
	}
	return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
}

func (l *genListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *genListener) Addr() net.Addr { return l.mux.base.Addr() }
