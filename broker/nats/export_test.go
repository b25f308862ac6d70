package nats

// Lanes returns how many channels have delivery state: subscribed ones,
// and unsubscribed ones whose last handler call is still running.
func (b *Broker) Lanes() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.lanes)
}

// StallRouter stops the router at its next message until release is
// called, as if it got no CPU: the intake queue fills.
func (b *Broker) StallRouter() (release func()) {
	b.mu.Lock()
	return b.mu.Unlock
}
