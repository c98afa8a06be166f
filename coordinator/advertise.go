package coordinator

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// AdvertiseAddr is the address others should dial for a listener bound at
// bound: advertise when it is HOST:PORT; HOST alone takes the bound port
// (so `--listen 0.0.0.0:0 --advertise NODE` works); "" takes the bound
// address. A result whose host is unspecified (0.0.0.0, ::) cannot be
// dialled from another machine: unspecified is then true and the caller
// chooses a host (see RouteHost).
func AdvertiseAddr(advertise string, bound net.Addr) (addr string, unspecified bool, err error) {
	ta, _ := bound.(*net.TCPAddr)
	port := ""
	if ta != nil {
		port = strconv.Itoa(ta.Port)
	}
	if advertise == "" {
		if ta != nil && ta.IP.IsUnspecified() {
			return net.JoinHostPort(ta.IP.String(), port), true, nil
		}
		return bound.String(), false, nil
	}
	if h, p, err := net.SplitHostPort(advertise); err == nil {
		if h == "" || p == "" {
			return "", false, fmt.Errorf("advertise %q: want HOST or HOST:PORT", advertise)
		}
		return advertise, isUnspecified(h), nil
	}
	if strings.Contains(advertise, "/") || port == "" {
		return "", false, fmt.Errorf("advertise %q: want HOST or HOST:PORT", advertise)
	}
	return net.JoinHostPort(strings.Trim(advertise, "[]"), port), isUnspecified(advertise), nil
}

func isUnspecified(host string) bool {
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsUnspecified()
}

// RouteHost is the local address this machine would use to reach target
// (host:port or a URL): the interface others on target's network reach it
// at. No packet is sent.
func RouteHost(target string) (string, error) {
	if i := strings.Index(target, "://"); i >= 0 {
		target = target[i+3:]
	}
	target = strings.TrimSuffix(target, "/")
	c, err := net.Dial("udp", target)
	if err != nil {
		return "", fmt.Errorf("find the local address that reaches %s: %w", target, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}
