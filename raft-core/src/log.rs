//! The in-memory Raft log: the entries after a compaction point (the last
//! snapshot, less a trailing window kept for slow followers).
//!
//! Entries are stored contiguously so that `index -> entry` is an offset
//! computation, and slices for AppendEntries are cheap clones of `Bytes`.

use alloc::vec::Vec;

use crate::types::{Entry, Index, Term};

/// The log of one node. `entries[i].index == offset + 1 + i`.
#[derive(Clone, Debug, Default)]
pub(crate) struct RaftLog {
    /// Index of the entry just before `entries[0]`: 0 for a log that starts
    /// at the beginning, else the last index compacted away (covered by a
    /// snapshot).
    offset: Index,
    /// Term of the entry at `offset`.
    offset_term: Term,
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log whose entries follow index `offset` of term `offset_term` (a
    /// snapshot's last included entry, or 0 and 0).
    pub(crate) fn after(offset: Index, offset_term: Term, entries: Vec<Entry>) -> RaftLog {
        debug_assert!(entries.first().is_none_or(|e| e.index == offset + 1));
        RaftLog { offset, offset_term, entries }
    }

    /// The last index compacted away (0 if none).
    pub(crate) fn offset(&self) -> Index {
        self.offset
    }

    /// Drops the entries up to and including `index`, which the log holds
    /// (a snapshot covers them). A no-op at or below the current offset.
    pub(crate) fn compact_to(&mut self, index: Index) {
        if index <= self.offset {
            return;
        }
        let term = self.term(index).expect("compacting to an index the log holds");
        let n = (index - self.offset) as usize;
        self.entries.drain(..n.min(self.entries.len()));
        self.offset = index;
        self.offset_term = term;
    }

    /// Discards every entry: the log now follows a snapshot ending at
    /// (`index`, `term`) that it does not match.
    pub(crate) fn reset_to(&mut self, index: Index, term: Term) {
        self.entries.clear();
        self.offset = index;
        self.offset_term = term;
    }

    pub(crate) fn last_index(&self) -> Index {
        self.offset + self.entries.len() as Index
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The term of the entry at `index`, or `None` if the log does not hold
    /// it (beyond the end, or compacted away).
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: Index) -> Option<&Entry> {
        let pos = index.checked_sub(self.offset + 1)?;
        self.entries.get(usize::try_from(pos).ok()?)
    }

    /// True if the log contains an entry at `index` with `term`.
    pub(crate) fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Entries `[from, to]` (inclusive) as a slice; empty if out of range.
    pub(crate) fn slice(&self, from: Index, to: Index) -> &[Entry] {
        if from > to || from <= self.offset || to > self.last_index() {
            return &[];
        }
        let lo = (from - self.offset - 1) as usize;
        let hi = (to - self.offset) as usize;
        &self.entries[lo..hi]
    }

    /// Up to `max_entries` entries starting at `from`, stopping once
    /// `max_bytes` is reached (always at least one entry if any exist).
    pub(crate) fn batch(&self, from: Index, max_entries: usize, max_bytes: usize) -> &[Entry] {
        let all = self.slice(from, self.last_index());
        let mut bytes = 0usize;
        let mut n = 0usize;
        for e in all.iter().take(max_entries) {
            bytes += e.size_bytes();
            if n > 0 && bytes > max_bytes {
                break;
            }
            n += 1;
        }
        &all[..n]
    }

    /// Appends entries that directly follow the last one.
    pub(crate) fn append(&mut self, entries: &[Entry]) {
        debug_assert!(entries.first().is_none_or(|e| e.index == self.last_index() + 1));
        self.entries.extend_from_slice(entries);
    }

    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push(entry);
    }

    /// Removes every entry with index `>= from`.
    pub(crate) fn truncate_from(&mut self, from: Index) {
        debug_assert!(from > self.offset);
        self.entries.truncate((from - self.offset - 1) as usize);
    }

    /// The first index holding `term`, searching back from `index` (terms are
    /// non-decreasing along the log, so this is a binary search).
    pub(crate) fn first_index_of_term(&self, term: Term, index: Index) -> Index {
        let upto = self.slice(self.offset + 1, index.min(self.last_index()));
        let pos = upto.partition_point(|e| e.term < term);
        self.offset + 1 + pos as Index
    }

    /// The last index holding `term`, if the log has any entry of it.
    pub(crate) fn last_index_of_term(&self, term: Term) -> Option<Index> {
        let pos = self.entries.partition_point(|e| e.term <= term);
        if pos == 0 {
            return (self.offset_term == term && self.offset > 0).then_some(self.offset);
        }
        let e = &self.entries[pos - 1];
        (e.term == term).then_some(e.index)
    }

    /// The election restriction (§5.4.1): is a log ending at
    /// (`last_term`, `last_index`) at least as up-to-date as ours?
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::types::EntryKind;
    use bytes::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry { term, index, kind: EntryKind::Normal, data: Bytes::new() }
    }

    /// A log after a snapshot ending at 10/3, holding 11..=13.
    fn compacted() -> RaftLog {
        RaftLog::after(10, 3, vec![entry(11, 4), entry(12, 4), entry(13, 5)])
    }

    #[test]
    fn slices_are_empty_outside_the_log_on_either_side() {
        let log = compacted();
        let indexes = |s: &[Entry]| s.iter().map(|e| e.index).collect::<Vec<_>>();
        assert_eq!(indexes(log.slice(11, 13)), [11, 12, 13]);
        assert_eq!(indexes(log.slice(12, 12)), [12]);
        // Reaching into the compacted part, or past the end, or backwards:
        // empty, each on its own.
        assert!(log.slice(10, 12).is_empty());
        assert!(log.slice(9, 9).is_empty());
        assert!(log.slice(12, 14).is_empty());
        assert!(log.slice(13, 12).is_empty());
    }

    #[test]
    fn the_compaction_point_still_names_its_term() {
        let log = compacted();
        assert_eq!((log.term(10), log.term(9), log.term(11)), (Some(3), None, Some(4)));
        // The last index of a term found only at the compaction point.
        assert_eq!(log.last_index_of_term(3), Some(10));
        assert_eq!(log.last_index_of_term(4), Some(12));
        assert_eq!(log.last_index_of_term(2), None);
        // A log from the beginning has no entry of term 0 to report.
        let fresh = RaftLog::after(0, 0, vec![entry(1, 1)]);
        assert_eq!(fresh.last_index_of_term(0), None);
        assert_eq!(fresh.last_index_of_term(1), Some(1));
    }

    #[test]
    fn compaction_keeps_what_follows_and_reset_keeps_nothing() {
        let mut log = compacted();
        log.compact_to(9);
        assert_eq!(log.offset(), 10, "compacting below the offset changes nothing");
        log.compact_to(12);
        assert_eq!((log.offset(), log.term(12), log.last_index()), (12, Some(4), 13));
        assert_eq!(log.entries().len(), 1);
        log.reset_to(20, 6);
        assert_eq!((log.offset(), log.last_index(), log.last_term(), log.entries().len()), (20, 20, 6, 0));
    }
}
