package coordinator

import (
	"net"
	"net/url"
	"testing"
)

func TestAdvertiseAddr(t *testing.T) {
	bound := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, c := range []struct {
		advertise, bound, want string
		unspecified            bool
		bad                    bool
	}{
		{"", "127.0.0.2:7000", "127.0.0.2:7000", false, false},
		{"", "0.0.0.0:7000", "0.0.0.0:7000", true, false},
		{"node7", "0.0.0.0:7000", "node7:7000", false, false},
		{"10.0.0.4:9", "0.0.0.0:7000", "10.0.0.4:9", false, false},
		{"::1", "[::]:7000", "[::1]:7000", false, false},
		{"0.0.0.0", "0.0.0.0:7000", "0.0.0.0:7000", true, false},
		{"http://x:1", "0.0.0.0:7000", "", false, true},
		{":9", "0.0.0.0:7000", "", false, true},
	} {
		got, unspec, err := AdvertiseAddr(c.advertise, bound(c.bound))
		if (err != nil) != c.bad || got != c.want || unspec != c.unspecified {
			t.Errorf("AdvertiseAddr(%q, %s) = %q, %v, %v; want %q, %v (error: %v)", c.advertise, c.bound, got, unspec, err, c.want, c.unspecified, c.bad)
		}
	}
	listen, _ := url.Parse("http://0.0.0.0:2379")
	for _, c := range []struct{ advertise, want string }{
		{"host1", "http://host1:2379"}, {"host1:1", "http://host1:1"}, {"http://host1:3", "http://host1:3"}, {"", ""}, {"0.0.0.0", ""},
	} {
		u, err := advertiseURL(c.advertise, listen)
		got := ""
		if err == nil {
			got = u.String()
		}
		if got != c.want {
			t.Errorf("advertiseURL(%q, 0.0.0.0:2379) = %q (%v), want %q", c.advertise, got, err, c.want)
		}
	}
}
