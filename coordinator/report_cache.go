package coordinator

import "sync"

// maxAssignSeen bounds assignSeen: a coordinator that has seen reports of
// more jobs than this forgets them all (the next report of each reads its
// assignment again).
const maxAssignSeen = 1024

// assignSeen remembers, per job, the assignment that the job's last
// accepted step report matched, so a report in steady state costs one etcd
// transaction (put the progress if the assignment's mod revision is still
// the one seen; otherwise read the assignment in the same transaction)
// instead of a read followed by a conditional write.
type assignSeen struct {
	mu   sync.Mutex
	jobs map[string]seenAssignment
}

// seenAssignment is what a report needs of the job's assignment: its
// generation, its mod revision (the transaction's guard) and its create
// revision (the epoch of the job's step counters).
type seenAssignment struct {
	generation     uint64
	modRevision    int64
	createRevision int64
}

// get returns the job's remembered assignment, if any.
func (s *assignSeen) get(job string) (seenAssignment, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.jobs[job]
	return a, ok
}

// put remembers a, the job's assignment as just read.
func (s *assignSeen) put(job string, a seenAssignment) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jobs == nil || len(s.jobs) >= maxAssignSeen {
		s.jobs = make(map[string]seenAssignment)
	}
	s.jobs[job] = a
}

// forget drops the job's remembered assignment (it has none now).
func (s *assignSeen) forget(job string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.jobs, job)
}
