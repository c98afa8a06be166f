package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/deploy/image"
	"github.com/loomtrain/loom/internal/security"
)

// The Prometheus Operator's types, as much of them as the manifests use:
// decoding strictly into them catches a misspelt field as surely as the
// operator's own schema would (its Go module is not a dependency).
type monitorTLS struct {
	ServerName string `json:"serverName"`
	CA         struct {
		Secret corev1.SecretKeySelector `json:"secret"`
	} `json:"ca"`
	Cert struct {
		Secret corev1.SecretKeySelector `json:"secret"`
	} `json:"cert"`
	KeySecret corev1.SecretKeySelector `json:"keySecret"`
}

type monitorEndpoint struct {
	Port        string      `json:"port"`
	Path        string      `json:"path"`
	Scheme      string      `json:"scheme"`
	HonorLabels bool        `json:"honorLabels"`
	Interval    string      `json:"interval"`
	TLSConfig   *monitorTLS `json:"tlsConfig"`
}

type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []monitorEndpoint    `json:"endpoints"`
	} `json:"spec"`
}

type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []monitorEndpoint    `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []struct {
			Name     string `json:"name"`
			Interval string `json:"interval"`
			Rules    []struct {
				Record string            `json:"record"`
				Alert  string            `json:"alert"`
				Expr   string            `json:"expr"`
				For    string            `json:"for"`
				Labels map[string]string `json:"labels"`
				Annot  map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// objects is one rendered kustomization, decoded.
type objects struct {
	namespaces   []corev1.Namespace
	services     []corev1.Service
	configMaps   []corev1.ConfigMap
	pvcs         []corev1.PersistentVolumeClaim
	deployments  []appsv1.Deployment
	statefulSets []appsv1.StatefulSet
	jobs         []batchv1.Job
	pdbs         []policyv1.PodDisruptionBudget
	netpols      []networkingv1.NetworkPolicy
	svcMonitors  []serviceMonitor
	podMonitors  []podMonitor
	rules        []prometheusRule
}

// grow appends a zero T to list and returns a pointer to it.
func grow[T any](list *[]T) *T {
	var zero T
	*list = append(*list, zero)
	return &(*list)[len(*list)-1]
}

// strict decodes b into v, refusing unknown fields.
func strict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	return d.Decode(v)
}

func render(t *testing.T, dir string) *objects {
	t.Helper()
	m, err := Render(dir)
	if err != nil {
		t.Fatal(err)
	}
	o := &objects{}
	for _, r := range m.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		kind := r.GetKind()
		var dst any
		switch kind {
		case "Namespace":
			dst = grow(&o.namespaces)
		case "Service":
			dst = grow(&o.services)
		case "ConfigMap":
			dst = grow(&o.configMaps)
		case "PersistentVolumeClaim":
			dst = grow(&o.pvcs)
		case "Deployment":
			dst = grow(&o.deployments)
		case "StatefulSet":
			dst = grow(&o.statefulSets)
		case "Job":
			dst = grow(&o.jobs)
		case "PodDisruptionBudget":
			dst = grow(&o.pdbs)
		case "NetworkPolicy":
			dst = grow(&o.netpols)
		case "ServiceMonitor":
			dst = grow(&o.svcMonitors)
		case "PodMonitor":
			dst = grow(&o.podMonitors)
		case "PrometheusRule":
			dst = grow(&o.rules)
		default:
			t.Errorf("%s: %s %s: a kind this test does not know; add it", dir, kind, r.GetName())
			continue
		}
		if err := strict(b, dst); err != nil {
			t.Errorf("%s: %s %s does not decode strictly into its type: %v", dir, kind, r.GetName(), err)
		}
	}
	return o
}

// workload is a pod template with its owner's name and selector.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector
	tmpl       corev1.PodTemplateSpec
	replicas   int32
}

func (o *objects) workloads() []workload {
	var ws []workload
	for _, d := range o.deployments {
		ws = append(ws, workload{"Deployment", d.Name, d.Spec.Selector, d.Spec.Template, ptrOr(d.Spec.Replicas, 1)})
	}
	for _, s := range o.statefulSets {
		ws = append(ws, workload{"StatefulSet", s.Name, s.Spec.Selector, s.Spec.Template, ptrOr(s.Spec.Replicas, 1)})
	}
	for _, j := range o.jobs {
		ws = append(ws, workload{"Job", j.Name, nil, j.Spec.Template, 1})
	}
	return ws
}

func ptrOr(p *int32, def int32) int32 {
	if p == nil {
		return def
	}
	return *p
}

func selects(t reporter, sel *metav1.LabelSelector, lbls map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return !s.Empty() && s.Matches(labels.Set(lbls))
}

// selected returns the workloads whose pods sel (a Service's map or a
// LabelSelector) picks.
func (o *objects) selected(t reporter, sel *metav1.LabelSelector) []workload {
	var out []workload
	for _, w := range o.workloads() {
		if selects(t, sel, w.tmpl.Labels) {
			out = append(out, w)
		}
	}
	return out
}

func (o *objects) service(name string) *corev1.Service {
	for i := range o.services {
		if o.services[i].Name == name {
			return &o.services[i]
		}
	}
	return nil
}

func (o *objects) configMap(name string) *corev1.ConfigMap {
	for i := range o.configMaps {
		if o.configMaps[i].Name == name {
			return &o.configMaps[i]
		}
	}
	return nil
}

// generated finds the ConfigMap kustomize generated as base (its name
// then carries a content hash).
func (o *objects) generated(base string) *corev1.ConfigMap {
	for i := range o.configMaps {
		n := o.configMaps[i].Name
		if n == base || strings.HasPrefix(n, base+"-") && len(n) == len(base)+11 {
			return &o.configMaps[i]
		}
	}
	return nil
}

func hasPort(c corev1.Container, name string) (corev1.ContainerPort, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p, true
		}
	}
	return corev1.ContainerPort{}, false
}

// flag returns the value of --name in args ("" if absent).
func flag(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func mountAt(c corev1.Container, path string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// tlsSecrets are the Secrets the manifests mount and docs/deploy.md tells
// users to create from `loom certs init`'s directories.
var tlsSecrets = []string{"loom-coordinator-tls", "loom-worker-tls", "loom-etcd-tls", "loom-admin-tls", "loom-viewer-tls"}

// reporter is what the checks report to: a *testing.T, or a collector
// for the test of the checks themselves.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Fatal(args ...any)
}

// checkInvariants checks what ties the objects together.
func checkInvariants(t reporter, dir string, o *objects, withEtcd bool) {
	ws := o.workloads()
	// Selectors pick their own templates; every pod runs as the image's user
	// and asks for resources.
	for _, w := range ws {
		if w.selector != nil && !selects(t, w.selector, w.tmpl.Labels) {
			t.Errorf("%s %s: selector %v does not match its template's labels %v", w.kind, w.name, w.selector.MatchLabels, w.tmpl.Labels)
		}
		ps := w.tmpl.Spec
		if sc := ps.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != image.UID {
			t.Errorf("%s %s: pod must run as non-root user %d (the image's)", w.kind, w.name, image.UID)
		}
		vols := map[string]corev1.Volume{}
		for _, v := range ps.Volumes {
			vols[v.Name] = v
		}
		claims := map[string]bool{}
		for _, p := range o.pvcs {
			claims[p.Name] = true
		}
		if w.kind == "StatefulSet" {
			for _, s := range o.statefulSets {
				if s.Name == w.name {
					for _, vct := range s.Spec.VolumeClaimTemplates {
						vols[vct.Name] = corev1.Volume{Name: vct.Name}
					}
				}
			}
		}
		for _, c := range ps.Containers {
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("%s %s/%s: no CPU or memory request", w.kind, w.name, c.Name)
			}
			for _, m := range c.VolumeMounts {
				v, ok := vols[m.Name]
				if !ok {
					t.Errorf("%s %s/%s: mount %s names no volume of the pod", w.kind, w.name, c.Name, m.Name)
					continue
				}
				switch {
				case v.ConfigMap != nil && o.configMap(v.ConfigMap.Name) == nil:
					t.Errorf("%s %s: volume %s: ConfigMap %s is not rendered", w.kind, w.name, v.Name, v.ConfigMap.Name)
				case v.Secret != nil && !slices.Contains(tlsSecrets, v.Secret.SecretName):
					t.Errorf("%s %s: volume %s: Secret %s is none of the documented %v", w.kind, w.name, v.Name, v.Secret.SecretName, tlsSecrets)
				case v.PersistentVolumeClaim != nil && !claims[v.PersistentVolumeClaim.ClaimName]:
					t.Errorf("%s %s: volume %s: PVC %s is not rendered", w.kind, w.name, v.Name, v.PersistentVolumeClaim.ClaimName)
				}
			}
			for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
				if pr == nil || pr.HTTPGet == nil {
					continue
				}
				if _, ok := hasPort(c, pr.HTTPGet.Port.StrVal); !ok {
					t.Errorf("%s %s/%s: probe port %q is not a container port", w.kind, w.name, c.Name, pr.HTTPGet.Port.String())
				}
			}
			for _, e := range c.Env {
				if r := e.ValueFrom; r != nil && r.ConfigMapKeyRef != nil {
					cm := o.configMap(r.ConfigMapKeyRef.Name)
					if cm == nil || cm.Data[r.ConfigMapKeyRef.Key] == "" {
						t.Errorf("%s %s/%s: env %s: ConfigMap %s has no key %s", w.kind, w.name, c.Name, e.Name, r.ConfigMapKeyRef.Name, r.ConfigMapKeyRef.Key)
					}
				}
			}
			// Every $(VAR) in the args is an env var of the container.
			for _, a := range c.Args {
				for rest := a; strings.Contains(rest, "$("); {
					i := strings.Index(rest, "$(")
					j := strings.Index(rest[i:], ")")
					name := rest[i+2 : i+j]
					if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name }) {
						t.Errorf("%s %s/%s: arg %q uses $(%s), which the container's env lacks", w.kind, w.name, c.Name, a, name)
					}
					rest = rest[i+j:]
				}
			}
			if strings.HasPrefix(c.Image, "gcr.io/etcd") {
				continue
			}
			// The loom containers: one image; TLS, data and checkpoint flags
			// name mounted directories.
			if !strings.Contains(c.Image, "loom") || !strings.Contains(c.Image, ":") {
				t.Errorf("%s %s/%s: image %q; want the loom image with a tag", w.kind, w.name, c.Name, c.Image)
			}
			if d := flag(c.Args, "tls-dir"); d == "" || mountAt(c, d) == nil || vols[mountAt(c, d).Name].Secret == nil {
				t.Errorf("%s %s/%s: --tls-dir %q is not a mounted Secret (every connection is mutual TLS)", w.kind, w.name, c.Name, d)
			} else if d != image.TLSDir {
				t.Errorf("%s %s/%s: --tls-dir %s; the image provides %s", w.kind, w.name, c.Name, d, image.TLSDir)
			}
			for _, f := range []string{"data-root", "checkpoint-root"} {
				if d := flag(c.Args, f); d != "" && c.Args[0] == "worker" && mountAt(c, d) == nil {
					t.Errorf("%s %s/%s: --%s %s is not mounted", w.kind, w.name, c.Name, f, d)
				}
			}
		}
	}
	// Services pick pods, and their target ports are those pods' ports.
	for _, s := range o.services {
		picked := o.selected(t, &metav1.LabelSelector{MatchLabels: s.Spec.Selector})
		if len(picked) == 0 {
			t.Errorf("Service %s: selector %v picks no pods", s.Name, s.Spec.Selector)
		}
		for _, w := range picked {
			for _, p := range s.Spec.Ports {
				if _, ok := hasPort(w.tmpl.Spec.Containers[0], p.TargetPort.StrVal); !ok {
					t.Errorf("Service %s port %s: target %q is not a port of %s %s", s.Name, p.Name, p.TargetPort.String(), w.kind, w.name)
				}
			}
		}
	}
	// A StatefulSet's serviceName is a headless Service that selects it.
	for _, ss := range o.statefulSets {
		svc := o.service(ss.Spec.ServiceName)
		if svc == nil || svc.Spec.ClusterIP != "None" || !selects(t, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, ss.Spec.Template.Labels) {
			t.Errorf("StatefulSet %s: serviceName %q is not a headless Service selecting it", ss.Name, ss.Spec.ServiceName)
		}
	}
	for _, p := range o.pdbs {
		if len(o.selected(t, p.Spec.Selector)) == 0 {
			t.Errorf("PodDisruptionBudget %s selects no pods", p.Name)
		}
	}

	// Network policies: each picks pods, names their ports, leaves none of
	// their ports unreachable (probes, Prometheus), and lets in only the
	// workloads meant to connect.
	allowed := map[string][]string{} // "workload/port" -> workloads allowed ("*": any)
	for _, np := range o.netpols {
		picked := o.selected(t, &np.Spec.PodSelector)
		if len(picked) == 0 {
			t.Errorf("NetworkPolicy %s picks no pods", np.Name)
		}
		for _, w := range picked {
			c := w.tmpl.Spec.Containers[0]
			covered := map[string]bool{}
			for _, rule := range np.Spec.Ingress {
				var from []string
				for _, peer := range rule.From {
					if peer.PodSelector == nil || len(peer.PodSelector.MatchLabels) == 0 {
						from = append(from, "*")
						continue
					}
					srcs := o.selected(t, peer.PodSelector)
					if len(srcs) == 0 {
						t.Errorf("NetworkPolicy %s: a from selector %v picks no pods", np.Name, peer.PodSelector.MatchLabels)
					}
					for _, s := range srcs {
						from = append(from, s.name)
					}
				}
				if len(rule.From) == 0 {
					from = []string{"*"}
				}
				for _, p := range rule.Ports {
					if _, ok := hasPort(c, p.Port.StrVal); !ok {
						t.Errorf("NetworkPolicy %s: port %q is not a port of %s", np.Name, p.Port.String(), w.name)
					}
					covered[p.Port.StrVal] = true
					allowed[w.name+"/"+p.Port.StrVal] = append(allowed[w.name+"/"+p.Port.StrVal], from...)
				}
			}
			for _, p := range c.Ports {
				if !covered[p.Name] {
					t.Errorf("NetworkPolicy %s leaves %s's port %s unreachable", np.Name, w.name, p.Name)
				}
			}
		}
	}
	for key, want := range map[string][]string{
		"loom-worker/data": {"loom-worker"},
		"loom-worker/http": {"*"},
	} {
		if got := allowed[key]; len(o.netpols) > 0 && !slices.Equal(got, want) {
			t.Errorf("NetworkPolicy: %s is open to %v; want %v", key, got, want)
		}
	}
	if withEtcd && len(o.netpols) > 0 {
		got := allowed["loom-etcd/client"]
		slices.Sort(got)
		if !slices.Equal(got, []string{"loom-coordinator", "loom-worker"}) {
			t.Errorf("NetworkPolicy: etcd's client port is open to %v; want the coordinators and workers", got)
		}
	}

	// The control plane's names: workers and the submit Job dial the
	// coordinator Service's gRPC port; workers advertise their own stable
	// name under the headless Service.
	coord := o.service("loom-coordinator")
	var coordPort int32
	if coord != nil {
		for _, p := range coord.Spec.Ports {
			if p.Name == "grpc" {
				coordPort = p.Port
			}
		}
	}
	var worker *appsv1.StatefulSet
	for i := range o.statefulSets {
		if o.statefulSets[i].Name == "loom-worker" {
			worker = &o.statefulSets[i]
		}
	}
	if coord == nil || worker == nil {
		t.Fatalf("%s: no loom-coordinator Service or loom-worker StatefulSet", dir)
	}
	for _, w := range ws {
		for _, c := range w.tmpl.Spec.Containers {
			if a := flag(c.Args, "coordinator"); a != "" && a != fmt.Sprintf("%s:%d", coord.Name, coordPort) {
				t.Errorf("%s %s: --coordinator %s; the Service is %s:%d", w.kind, w.name, a, coord.Name, coordPort)
			}
		}
	}
	wc := worker.Spec.Template.Spec.Containers[0]
	if adv := flag(wc.Args, "advertise"); adv != "$(POD_NAME)."+worker.Spec.ServiceName {
		t.Errorf("worker --advertise %q; want $(POD_NAME).%s (its stable DNS name)", adv, worker.Spec.ServiceName)
	}
	if l := flag(wc.Args, "listen"); !strings.HasSuffix(l, ":"+strconv.Itoa(int(mustPort(t, wc, "data").ContainerPort))) {
		t.Errorf("worker --listen %s is not its data port", l)
	}
	if h := flag(wc.Args, "http"); !strings.HasSuffix(h, ":"+strconv.Itoa(int(mustPort(t, wc, "http").ContainerPort))) {
		t.Errorf("worker --http %s is not its http port", h)
	}
	for _, d := range o.deployments {
		if d.Name == "loom-coordinator" {
			c := d.Spec.Template.Spec.Containers[0]
			if adv := flag(c.Args, "advertise"); adv != coord.Name {
				t.Errorf("coordinator --advertise %q; want the Service %s (both coordinators serve every call)", adv, coord.Name)
			}
			if ptrOr(d.Spec.Replicas, 1) != 2 {
				t.Errorf("coordinator replicas %d; want 2 (leader and standby)", ptrOr(d.Spec.Replicas, 1))
			}
			if l := flag(c.Args, "listen"); !strings.HasSuffix(l, ":"+strconv.Itoa(int(coordPort))) {
				t.Errorf("coordinator --listen %s is not the Service's port %d", l, coordPort)
			}
		}
	}
	// The etcd endpoints name the etcd StatefulSet's members under its
	// headless Service, and its --initial-cluster lists every member.
	cfg := o.generated("loom-config")
	if cfg == nil {
		t.Fatal("no loom-config ConfigMap")
	}
	eps := strings.Split(cfg.Data["etcd-endpoints"], ",")
	for _, e := range eps {
		if !strings.HasPrefix(e, "https://") {
			t.Errorf("etcd endpoint %q is not https (etcd takes client certificates)", e)
		}
	}
	if withEtcd {
		var etcd *appsv1.StatefulSet
		for i := range o.statefulSets {
			if o.statefulSets[i].Name == "loom-etcd" {
				etcd = &o.statefulSets[i]
			}
		}
		if etcd == nil {
			t.Fatal("no loom-etcd StatefulSet")
		}
		n := int(ptrOr(etcd.Spec.Replicas, 1))
		var want, cluster []string
		for i := range n {
			want = append(want, fmt.Sprintf("https://%s-%d.%s:2379", etcd.Name, i, etcd.Spec.ServiceName))
			cluster = append(cluster, fmt.Sprintf("%s-%d=https://%s-%d.%s:2380", etcd.Name, i, etcd.Name, i, etcd.Spec.ServiceName))
		}
		if !slices.Equal(eps, want) {
			t.Errorf("etcd endpoints %v; want %v", eps, want)
		}
		args := etcd.Spec.Template.Spec.Containers[0].Args
		if got := flag(args, "initial-cluster"); got != strings.Join(cluster, ",") {
			t.Errorf("etcd --initial-cluster %s; want %s", got, strings.Join(cluster, ","))
		}
		if !slices.Contains(args, "--client-cert-auth") || !slices.Contains(args, "--peer-client-cert-auth") {
			t.Errorf("etcd does not require client certificates: %v", args)
		}
		if got := flag(args, "max-request-bytes"); got != strconv.Itoa(security.EtcdMaxRequestBytes) {
			t.Errorf("etcd --max-request-bytes %s; want %d (a job spec of at most %d and its transaction)", got, security.EtcdMaxRequestBytes, security.MaxSpecBytes)
		}
	} else if len(o.statefulSets) != 1 {
		t.Errorf("external etcd: %d StatefulSets; want only the workers'", len(o.statefulSets))
	}
	if len(o.netpols) == 0 {
		t.Errorf("no NetworkPolicies")
	}

	// The job: a valid spec whose world size is the workers' replicas and
	// whose paths lie under the workers' roots.
	var job *corev1.ConfigMap
	for _, j := range o.jobs {
		ps := j.Spec.Template.Spec
		for _, v := range ps.Volumes {
			if v.ConfigMap != nil {
				job = o.configMap(v.ConfigMap.Name)
			}
		}
		c := ps.Containers[0]
		if c.Args[0] != "submit" || mountAt(c, filepath.Dir(c.Args[1])) == nil {
			t.Errorf("Job %s: args %v; want `submit JOB.yaml` from the mounted ConfigMap", j.Name, c.Args)
		}
		if ps.RestartPolicy != corev1.RestartPolicyNever {
			t.Errorf("Job %s: restartPolicy %s", j.Name, ps.RestartPolicy)
		}
	}
	if job == nil || job.Data["job.yaml"] == "" {
		t.Fatal("the submit Job mounts no ConfigMap with job.yaml")
	}
	spec, err := api.ParseSpec([]byte(job.Data["job.yaml"]), "ConfigMap "+job.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Supported(spec, "ConfigMap "+job.Name); err != nil {
		t.Errorf("%v", err)
	}
	if ws := spec.Parallel.WorldSize(); ws != int(ptrOr(worker.Spec.Replicas, 1)) {
		t.Errorf("the job's world size is %d but loom-worker has %d replicas", ws, ptrOr(worker.Spec.Replicas, 1))
	}
	roots := security.Roots{Data: flag(wc.Args, "data-root"), Checkpoint: flag(wc.Args, "checkpoint-root")}
	if err := roots.CheckJob(spec, ""); err != nil {
		t.Errorf("the job's paths: %v", err)
	}
	// The worker's threads follow its CPU limit.
	lim := wc.Resources.Limits.Cpu()
	if flag(wc.Args, "threads") != "$(LOOM_THREADS)" || lim.Cmp(resource.MustParse("1")) < 0 {
		t.Errorf("worker --threads %q with CPU limit %v; want $(LOOM_THREADS) from limits.cpu", flag(wc.Args, "threads"), lim)
	}
	// Ports the image documents.
	if mustPort(t, wc, "data").ContainerPort != 7071 || mustPort(t, wc, "http").ContainerPort != 7081 || coordPort != 7070 {
		t.Errorf("%s", "ports differ from the image's exposed 7070 (coordinator), 7071 and 7081 (worker)")
	}
}

func mustPort(t reporter, c corev1.Container, name string) corev1.ContainerPort {
	t.Helper()
	p, ok := hasPort(c, name)
	if !ok {
		t.Fatalf("container %s has no port %s", c.Name, name)
	}
	return p
}

func TestBase(t *testing.T) {
	o := render(t, "base")
	checkInvariants(t, "base", o, true)
	if len(o.svcMonitors)+len(o.podMonitors) != 0 {
		t.Error("the base has monitors; they belong to components/monitoring")
	}
}

func TestExampleOverlay(t *testing.T) {
	o := render(t, "overlays/example")
	checkInvariants(t, "overlays/example", o, true)
	for _, w := range o.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			if !strings.HasPrefix(c.Image, "gcr.io/etcd") && c.Image != "registry.example.com/ml/loom:0.1.0-dev" {
				t.Errorf("%s %s: image %s; want the overlay's", w.kind, w.name, c.Image)
			}
		}
	}
	if len(o.namespaces) != 1 || o.namespaces[0].Name != "loom" {
		t.Errorf("namespaces %v", o.namespaces)
	}
	for _, s := range o.services {
		if s.Namespace != "loom" {
			t.Errorf("Service %s in namespace %q", s.Name, s.Namespace)
		}
	}
	// Monitoring: the monitors pick the coordinator Service's and the
	// workers' http ports, keep Loom's job label, and present the viewer
	// certificate.
	if len(o.svcMonitors) != 1 || len(o.podMonitors) != 1 || len(o.rules) != 1 {
		t.Fatalf("%d ServiceMonitors, %d PodMonitors, %d PrometheusRules; want one each", len(o.svcMonitors), len(o.podMonitors), len(o.rules))
	}
	sm := o.svcMonitors[0]
	var svcs []corev1.Service
	for _, s := range o.services {
		if selects(t, &sm.Spec.Selector, s.Labels) {
			svcs = append(svcs, s)
		}
	}
	if len(svcs) != 1 || svcs[0].Name != "loom-coordinator" {
		t.Errorf("ServiceMonitor selects Services %v; want loom-coordinator (its labels must carry the name)", svcs)
	}
	checkEndpoint := func(what string, ep monitorEndpoint, c corev1.Container) {
		if _, ok := hasPort(c, ep.Port); !ok || ep.Path != "/metrics" || ep.Scheme != "https" || !ep.HonorLabels {
			t.Errorf("%s endpoint %+v: want port http, /metrics, https, honorLabels", what, ep)
		}
		if ep.TLSConfig == nil || ep.TLSConfig.Cert.Secret.Name != "loom-viewer-tls" || ep.TLSConfig.KeySecret.Name != "loom-viewer-tls" {
			t.Errorf("%s: not presenting the viewer certificate", what)
		}
	}
	for _, d := range o.deployments {
		if d.Name == "loom-coordinator" {
			checkEndpoint("ServiceMonitor", sm.Spec.Endpoints[0], d.Spec.Template.Spec.Containers[0])
		}
	}
	pm := o.podMonitors[0]
	picked := o.selected(t, &pm.Spec.Selector)
	if len(picked) != 1 || picked[0].name != "loom-worker" {
		t.Fatalf("PodMonitor picks %v; want loom-worker", picked)
	}
	checkEndpoint("PodMonitor", pm.Spec.PodMetricsEndpoints[0], picked[0].tmpl.Spec.Containers[0])
	if sn := pm.Spec.PodMetricsEndpoints[0].TLSConfig.ServerName; !strings.HasSuffix(sn, "."+picked[0].name) {
		t.Errorf("PodMonitor serverName %q is not under *.%s (the workers' certificate)", sn, picked[0].name)
	}
	var dash *corev1.ConfigMap
	for i := range o.configMaps {
		if o.configMaps[i].Labels["grafana_dashboard"] == "1" {
			dash = &o.configMaps[i]
		}
	}
	want, _ := os.ReadFile("../grafana/loom-dashboard.json")
	if dash == nil || dash.Data["loom-dashboard.json"] != string(want) {
		t.Error("no Grafana dashboard ConfigMap holding deploy/grafana/loom-dashboard.json")
	}
	if len(o.rules[0].Spec.Groups) == 0 || len(o.rules[0].Spec.Groups[0].Rules) == 0 {
		t.Error("the PrometheusRule has no rules")
	}
}

func TestExternalEtcdOverlay(t *testing.T) {
	o := render(t, "overlays/external-etcd")
	checkInvariants(t, "overlays/external-etcd", o, false)
	if !strings.Contains(o.generated("loom-config").Data["etcd-endpoints"], "etcd.infra.svc") {
		t.Error("the overlay's etcd endpoints were not used")
	}
}

// TestGeneratedCurrent: the monitoring component's copies of
// deploy/grafana's files are current (`make k8s` rewrites them).
func TestGeneratedCurrent(t *testing.T) {
	files, err := Generated("../grafana")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not current (%v): run `make k8s`", name, err)
		}
	}
}

// collector records what checkInvariants reports; Fatalf stops it.
type collector struct{ msgs []string }

type stop struct{}

func (c *collector) Helper()                   {}
func (c *collector) Errorf(f string, a ...any) { c.msgs = append(c.msgs, fmt.Sprintf(f, a...)) }
func (c *collector) Fatalf(f string, a ...any) {
	c.Errorf(f, a...)
	panic(stop{})
}
func (c *collector) Fatal(a ...any) { c.Fatalf("%s", fmt.Sprint(a...)) }

// A broken manifest is caught: the invariants are not vacuous.
func TestInvariantsCatchMistakes(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "base"), os.DirFS("base")); err != nil {
		t.Fatal(err)
	}
	for file, edits := range map[string][][2]string{
		"worker.yaml": {
			{"--coordinator=loom-coordinator:7070", "--coordinator=loom-coord:7070"},
			{"mountPath: /data\n", "mountPath: /dataset\n"},
			{"--advertise=$(POD_NAME).loom-worker", "--advertise=$(POD).loom-worker"},
			{"secretName: loom-worker-tls", "secretName: worker-certs"},
		},
		"coordinator.yaml":   {{"targetPort: http", "targetPort: web"}},
		"networkpolicy.yaml": {{"        - port: data\n", "        - port: tensors\n"}},
		"etcd.yaml":          {{"loom-etcd-2=https://loom-etcd-2.loom-etcd:2380", "loom-etcd-3=https://loom-etcd-3.loom-etcd:2380"}},
		"job.yaml":           {{"parallel: {dp: 2}", "parallel: {dp: 4}"}, {"micro_batch: 8", "micro_batch: 4"}, {"dir: /checkpoints", "dir: /tmp/ck"}},
	} {
		p := filepath.Join(dir, "base", file)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range edits {
			if !strings.Contains(string(b), e[0]) {
				t.Fatalf("%s lacks %q", file, e[0])
			}
			b = []byte(strings.Replace(string(b), e[0], e[1], 1))
		}
		os.WriteFile(p, b, 0o644)
	}
	o := render(t, filepath.Join(dir, "base"))
	c := &collector{}
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(stop); !ok {
					panic(r)
				}
			}
		}()
		checkInvariants(c, "broken", o, true)
	}()
	for _, want := range []string{
		"--coordinator loom-coord:7070",
		"--data-root /data is not mounted",
		"uses $(POD), which the container's env lacks",
		"Secret worker-certs is none of the documented",
		`target "web" is not a port`,
		"etcd --initial-cluster",
		"world size is 4 but loom-worker has 2 replicas",
		"checkpoint.dir: /tmp/ck is outside --checkpoint-root /checkpoints",
		`NetworkPolicy loom-worker: port "tensors" is not a port of loom-worker`,
		"NetworkPolicy loom-worker leaves loom-worker's port data unreachable",
	} {
		if !slices.ContainsFunc(c.msgs, func(m string) bool { return strings.Contains(m, want) }) {
			t.Errorf("the invariants missed %q; they said:\n%s", want, strings.Join(c.msgs, "\n"))
		}
	}
}
