// Package security owns how Loom's processes trust each other: TLS
// material from flags (--tls-dir or --tls-cert/--tls-key/--tls-ca),
// certificates reloaded when their files change, mutual-TLS configurations
// for the coordinator API, etcd, the workers' gRPC Peer streams and their
// raw tcp bulk links, roles carried in client certificates or bearer
// tokens, the gRPC interceptors that refuse unauthenticated or
// unauthorised calls, the size bounds of control-plane messages, the
// directories a job spec may name (--data-root, --checkpoint-root), and a
// development CA (`loom certs init`).
//
// Every connection is mutual TLS when TLS is configured: servers require a
// client certificate signed by the CA and clients verify the server's
// certificate against the CA and the name they dialled. Plaintext stays
// possible (no TLS flags) for one machine; Describe says so for the log.
package security
