package schedule

// AddComm returns s with the communication between stages added to each
// rank's list (PyTorch pipelining's separate communication pass): a
// RECV_F right before every forward whose input comes from another rank
// and a SEND_F right after every forward whose output goes to one; a
// RECV_B before every backward whose output gradient comes from another
// rank and a SEND_B after every backward whose input gradient goes to one.
// Adjacent stages on the same rank (one rank holding several stages) pass
// their buffers directly and get no actions. Existing communication
// actions are dropped first, so AddComm is idempotent.
//
// A receive is where the executor waits for the message; its transfer is
// posted ahead and runs beside compute, and a send returns once its buffer
// is handed to the transport, so only receives can block.
func AddComm(s *Schedule) *Schedule {
	out := *s
	out.Ranks = make([][]Action, len(s.Ranks))
	last := s.Stages() - 1
	for r, as := range s.Ranks {
		var l []Action
		for _, a := range as {
			switch a.Kind {
			case F:
				if a.Stage > 0 && s.RankOf(a.Stage-1) != r {
					l = append(l, Action{a.Stage, RecvF, a.MB})
				}
				l = append(l, a)
				if a.Stage < last && s.RankOf(a.Stage+1) != r {
					l = append(l, Action{a.Stage, SendF, a.MB})
				}
			case B:
				if a.Stage < last && s.RankOf(a.Stage+1) != r {
					l = append(l, Action{a.Stage, RecvB, a.MB})
				}
				l = append(l, a)
				if a.Stage > 0 && s.RankOf(a.Stage-1) != r {
					l = append(l, Action{a.Stage, SendB, a.MB})
				}
			case W:
				l = append(l, a)
			}
		}
		out.Ranks[r] = l
	}
	return &out
}

// Peer is the other end of a communication action: the stage that sends
// what a receive waits for, or receives what a send sends, and its rank.
func (s *Schedule) Peer(a Action) (stage, rank int) {
	switch a.Kind {
	case SendF, RecvB:
		stage = a.Stage + 1
	case RecvF, SendB:
		stage = a.Stage - 1
	default:
		return -1, -1
	}
	if stage < 0 || stage >= s.Stages() {
		return -1, -1
	}
	return stage, s.RankOf(stage)
}

// Match is the action that pairs with communication action a: the send a
// receive waits for, or the receive a send feeds.
func Match(a Action) Action {
	switch a.Kind {
	case SendF:
		return Action{a.Stage + 1, RecvF, a.MB}
	case RecvF:
		return Action{a.Stage - 1, SendF, a.MB}
	case SendB:
		return Action{a.Stage - 1, RecvB, a.MB}
	case RecvB:
		return Action{a.Stage + 1, SendB, a.MB}
	}
	return a
}

// Incoming lists, in send order, what rank r receives from rank src: the
// sends of src whose receiving stage runs on r. The executor receives in
// this order (a transport matches a pair's messages in order) and holds
// each until r's matching receive action takes it.
func (s *Schedule) Incoming(r, src int) []Action {
	var out []Action
	for _, a := range s.Ranks[src] {
		if a.Kind != SendF && a.Kind != SendB {
			continue
		}
		if _, pr := s.Peer(a); pr == r {
			out = append(out, a)
		}
	}
	return out
}
