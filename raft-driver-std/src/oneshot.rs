//! A channel for exactly one value (a proposal's result, a read's answer) whose receiver sleeps
//! without spinning.
//!
//! `crossbeam_channel`'s receivers spin and call `sched_yield` a few times before they sleep. That
//! is the right trade for one busy consumer, and the wrong one for a server with a thread per
//! command in flight: measured on raftkv under `redis-benchmark -P 16 -c 50`, a fifth of the
//! leader's CPU went to those yields and the context switches they caused. Here a waiting receiver
//! goes straight to a condition variable (a futex).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use crossbeam_channel::{RecvTimeoutError, TryRecvError};

/// The sending half: [`send`](Sender::send) once; dropping it unsent disconnects the receiver.
#[derive(Debug)]
pub struct Sender<T>(Arc<Slot<T>>);

/// The receiving half.
#[derive(Debug)]
pub struct Receiver<T>(Arc<Slot<T>>);

#[derive(Debug)]
struct Slot<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

#[derive(Debug)]
enum State<T> {
    Empty,
    Full(T),
    /// Taken by the receiver, or the sender went away without sending.
    Done,
}

/// A new channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Slot { state: Mutex::new(State::Empty), changed: Condvar::new() });
    (Sender(Arc::clone(&slot)), Receiver(slot))
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Sender<T> {
    /// Hands `value` to the receiver; `Err(value)` if a value was sent already.
    pub fn send(&self, value: T) -> Result<(), T> {
        let mut state = self.0.lock();
        if !matches!(*state, State::Empty) {
            return Err(value);
        }
        *state = State::Full(value);
        drop(state);
        self.0.changed.notify_one();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if matches!(*state, State::Empty) {
            *state = State::Done;
            drop(state);
            self.0.changed.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// The value if it is there.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut state = self.0.lock();
        match std::mem::replace(&mut *state, State::Done) {
            State::Full(value) => Ok(value),
            State::Empty => {
                *state = State::Empty;
                Err(TryRecvError::Empty)
            }
            State::Done => Err(TryRecvError::Disconnected),
        }
    }

    /// Waits at most `timeout` for the value.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_deadline(Instant::now().checked_add(timeout).unwrap_or_else(far_future))
    }

    /// Waits until `deadline` for the value.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        let mut state = self.0.lock();
        loop {
            match std::mem::replace(&mut *state, State::Done) {
                State::Full(value) => return Ok(value),
                State::Done => return Err(RecvTimeoutError::Disconnected),
                State::Empty => *state = State::Empty,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvTimeoutError::Timeout);
            }
            state = self.0.changed.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Waits for the value as long as it takes.
    pub fn recv(&self) -> Result<T, RecvTimeoutError> {
        self.recv_deadline(far_future())
    }
}

/// A deadline no wait reaches.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_across_threads_then_disconnected() {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7).expect("first send");
            assert_eq!(tx.send(8), Err(8), "a second value is refused");
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(7));
        sender.join().expect("sender");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn timeout_empty_and_a_dropped_sender() {
        let (tx, rx) = channel::<u8>();
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let started = Instant::now();
        assert_eq!(rx.recv_timeout(Duration::from_millis(30)), Err(RecvTimeoutError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(30));
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(tx);
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Err(RecvTimeoutError::Disconnected));
        dropper.join().expect("dropper");
        // A value sent before the sender went away is still received.
        let (tx, rx) = channel();
        tx.send(1).expect("send");
        drop(tx);
        assert_eq!(rx.recv(), Ok(1));
    }
}
