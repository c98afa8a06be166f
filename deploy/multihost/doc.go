// Package multihost holds Loom's multi-host test (`make test-multihost`,
// run by .ci/run as root): three network namespaces joined by veth pairs
// and a bridge, each a host with its own address — etcd and the
// coordinator on A, a worker on each of B and C — with mutual TLS on every
// connection. A dp 2 job trained across B and C matches the single-worker
// loss; cutting C's link mid-run fails a job without restarts within a
// bound, naming C's rank and address, and an elastic job (min_dp 1) heals
// on B alone, continuing as one worker resumed by hand from the same
// checkpoint; a degraded link (tc netem delay and loss, or tbf where
// the kernel lacks netem) still trains to the end. The namespaces have no
// route out and the bridge no address, so the test's traffic stays inside.
package multihost
