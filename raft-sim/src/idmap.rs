//! A map keyed by node id, stored by position: node ids are small (1 to 7), and the simulator looks
//! nodes up several times per event, so a vector slot beats a tree search. Iteration is in id
//! order, as a `BTreeMap`'s would be.

use std::ops::Index;

use raft_core::NodeId;

/// Values by node id.
#[derive(Clone, Debug)]
pub struct IdMap<T> {
    /// `slots[id]` holds the value for `id`.
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Default for IdMap<T> {
    fn default() -> IdMap<T> {
        IdMap { slots: Vec::new(), len: 0 }
    }
}

impl<T> IdMap<T> {
    /// An empty map.
    pub fn new() -> IdMap<T> {
        IdMap::default()
    }

    /// The value for `id`.
    #[inline]
    pub fn get(&self, id: &NodeId) -> Option<&T> {
        self.slots.get(usize::try_from(*id).ok()?)?.as_ref()
    }

    /// The value for `id`, mutably.
    #[inline]
    pub fn get_mut(&mut self, id: &NodeId) -> Option<&mut T> {
        self.slots.get_mut(usize::try_from(*id).ok()?)?.as_mut()
    }

    /// Sets the value for `id`, returning the previous one.
    pub fn insert(&mut self, id: NodeId, value: T) -> Option<T> {
        let i = usize::try_from(id).expect("node ids are small");
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        let old = self.slots[i].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value for `id`, inserting the default first if there is none.
    #[inline]
    pub fn get_or_default(&mut self, id: NodeId) -> &mut T
    where
        T: Default,
    {
        if self.get(&id).is_none() {
            self.insert(id, T::default());
        }
        self.get_mut(&id).expect("just inserted")
    }

    /// Number of ids with a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id has a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(id, value)` in id order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, v)| v.as_ref().map(|v| (i as NodeId, v)))
    }

    /// The ids with a value, in order.
    pub fn keys(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.iter().map(|(id, _)| id)
    }

    /// The values in id order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(Option::as_ref)
    }
}

impl<T> Index<&NodeId> for IdMap<T> {
    type Output = T;

    fn index(&self, id: &NodeId) -> &T {
        self.get(id).unwrap_or_else(|| panic!("no node {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_an_ordered_map_of_ids() {
        let mut m = IdMap::new();
        assert!(m.is_empty() && m.get(&3).is_none());
        assert_eq!(m.insert(3, "c"), None);
        assert_eq!(m.insert(1, "a"), None);
        assert_eq!(m.insert(3, "C"), Some("c"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.iter().collect::<Vec<_>>(), [(1, &"a"), (3, &"C")]);
        assert_eq!(m.keys().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(m[&1], "a");
        assert!(m.get(&2).is_none() && m.get(&99).is_none() && m.get_mut(&u64::MAX).is_none());
        let mut d: IdMap<u32> = IdMap::new();
        *d.get_or_default(2) += 5;
        *d.get_or_default(2) += 1;
        assert_eq!(d.values().collect::<Vec<_>>(), [&6]);
    }
}
