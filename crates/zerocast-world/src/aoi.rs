//! Area of interest: a spatial grid that knows which members are in which cell, so an event is
//! sent only to the members of the 3×3 cells around it, and members learn when others come
//! into or go out of that range. Sans-IO: the grid stores whatever handle you give it (a
//! [`Session`] in a server) and never touches a socket.
//!
//! Positions are 2-D (`x`, `y`, the ground plane); a cell is `cell_size` wide. Two members see
//! each other when their cells are at most one apart in both directions.

use std::collections::HashMap;

use zerocast::{SendBuffer, Session};

/// A member's key: the player id.
pub type EntityId = u64;

type Cell = (i32, i32);

struct Entry<T> {
    cell: Cell,
    member: T,
}

/// Who came into range and who went out of it after an update, for enter/leave notices. Each
/// id listed sees the updated member appear (or disappear) and vice versa: visibility is
/// symmetric.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Visibility {
    /// Members now in range that were not before.
    pub entered: Vec<EntityId>,
    /// Members in range before and not any more.
    pub left: Vec<EntityId>,
}

impl Visibility {
    /// The change from having `before` in range to having `after`.
    fn between(before: Vec<EntityId>, after: &[EntityId]) -> Self {
        Self {
            entered: after
                .iter()
                .copied()
                .filter(|a| !before.contains(a))
                .collect(),
            left: before.into_iter().filter(|b| !after.contains(b)).collect(),
        }
    }
}

/// The grid. Not synchronised: a world keeps it behind its own lock.
pub struct Grid<T> {
    cell_size: f32,
    cells: HashMap<Cell, Vec<EntityId>>,
    members: HashMap<EntityId, Entry<T>>,
}

impl<T> Grid<T> {
    /// An empty grid with cells `cell_size` wide (clamped to at least 1).
    pub fn new(cell_size: f32) -> Self {
        Self {
            cell_size: if cell_size.is_finite() {
                cell_size.max(1.0)
            } else {
                1.0
            },
            cells: HashMap::new(),
            members: HashMap::new(),
        }
    }

    /// The cell holding `(x, y)`. Non-finite coordinates land in cell (0, 0); the world
    /// rejects them before they get here.
    fn cell_of(&self, x: f32, y: f32) -> Cell {
        let c = |v: f32| {
            let i = (v / self.cell_size).floor();
            if i.is_finite() {
                i.clamp(i32::MIN as f32, i32::MAX as f32) as i32
            } else {
                0
            }
        };
        (c(x), c(y))
    }

    /// Members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True without members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member stored for `id`.
    pub fn get(&self, id: EntityId) -> Option<&T> {
        self.members.get(&id).map(|e| &e.member)
    }

    /// Ids in the 3×3 cells around `cell`, `except` excluded.
    fn around(&self, cell: Cell, except: EntityId) -> impl Iterator<Item = EntityId> + '_ {
        neighbourhood(cell)
            .filter_map(|c| self.cells.get(&c))
            .flatten()
            .copied()
            .filter(move |&id| id != except)
    }

    /// Adds (or re-adds) `id` at `(x, y)`; everyone now in range is `entered`.
    pub fn insert(&mut self, id: EntityId, member: T, x: f32, y: f32) -> Visibility {
        // Re-inserting: whoever stays in range neither leaves nor enters.
        let before = self.remove(id).left;
        let cell = self.cell_of(x, y);
        self.cells.entry(cell).or_default().push(id);
        self.members.insert(id, Entry { cell, member });
        let after: Vec<EntityId> = self.around(cell, id).collect();
        Visibility::between(before, &after)
    }

    /// Moves `id` to `(x, y)`. Crossing into another cell changes who is in range; within a
    /// cell nothing changes. `None` if `id` is not a member.
    pub fn move_to(&mut self, id: EntityId, x: f32, y: f32) -> Option<Visibility> {
        let new = self.cell_of(x, y);
        let old = self.members.get(&id)?.cell;
        if new == old {
            return Some(Visibility::default());
        }
        let before: Vec<EntityId> = self.around(old, id).collect();
        if let Some(ids) = self.cells.get_mut(&old) {
            ids.retain(|&m| m != id);
            if ids.is_empty() {
                self.cells.remove(&old);
            }
        }
        self.cells.entry(new).or_default().push(id);
        if let Some(e) = self.members.get_mut(&id) {
            e.cell = new;
        }
        let after: Vec<EntityId> = self.around(new, id).collect();
        Some(Visibility::between(before, &after))
    }

    /// Removes `id`; everyone who had it in range is `left`.
    pub fn remove(&mut self, id: EntityId) -> Visibility {
        let Some(entry) = self.members.remove(&id) else {
            return Visibility::default();
        };
        if let Some(ids) = self.cells.get_mut(&entry.cell) {
            ids.retain(|&m| m != id);
            if ids.is_empty() {
                self.cells.remove(&entry.cell);
            }
        }
        Visibility {
            entered: Vec::new(),
            left: self.around(entry.cell, id).collect(),
        }
    }

    /// Calls `f` for every member in range of `id` (itself excluded).
    pub fn for_each_near(&self, id: EntityId, mut f: impl FnMut(EntityId, &T)) {
        let Some(entry) = self.members.get(&id) else {
            return;
        };
        for other in self.around(entry.cell, id) {
            if let Some(e) = self.members.get(&other) {
                f(other, &e.member);
            }
        }
    }
}

impl Grid<Session> {
    /// Queues `buf` on every session in range of `id` (not `id` itself): one encode, a
    /// reference per recipient, no copy. Returns how many it was queued on.
    pub fn broadcast_near(&self, id: EntityId, buf: &SendBuffer) -> usize {
        let mut n = 0;
        self.for_each_near(id, |_, s| {
            if s.send(buf.clone()).is_ok() {
                n += 1;
            }
        });
        n
    }
}

fn neighbourhood((cx, cy): Cell) -> impl Iterator<Item = Cell> {
    (-1..=1)
        .flat_map(move |dx| (-1..=1).map(move |dy| (cx.saturating_add(dx), cy.saturating_add(dy))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<EntityId>) -> Vec<EntityId> {
        v.sort_unstable();
        v
    }

    fn near(g: &Grid<()>, id: EntityId) -> Vec<EntityId> {
        let mut v = Vec::new();
        g.for_each_near(id, |o, _| v.push(o));
        sorted(v)
    }

    #[test]
    fn only_the_three_by_three_neighbourhood_is_in_range() {
        let mut g = Grid::new(10.0);
        g.insert(1, (), 5.0, 5.0); // cell (0, 0)
        g.insert(2, (), 15.0, 15.0); // (1, 1): diagonal neighbour
        g.insert(3, (), -5.0, 5.0); // (-1, 0): neighbour
        g.insert(4, (), 25.0, 5.0); // (2, 0): two cells away
        g.insert(5, (), 9.9, -0.1); // (0, -1): neighbour
        assert_eq!(near(&g, 1), [2, 3, 5]);
        assert_eq!(near(&g, 4), [2]);
    }

    #[test]
    fn crossing_cells_reports_who_entered_and_left() {
        let mut g = Grid::new(10.0);
        g.insert(1, (), 5.0, 5.0);
        g.insert(2, (), -15.0, 5.0); // (-2, 0): out of range of (0, 0)
        g.insert(3, (), 25.0, 5.0); // (2, 0)
                                    // 1 walks east into (1, 0): 3 comes into range, nobody leaves (2 was never in range).
        let v = g.move_to(1, 12.0, 5.0).unwrap();
        assert_eq!((v.entered, v.left), (vec![3], vec![]));
        // Within the same cell nothing changes.
        assert_eq!(g.move_to(1, 18.0, 9.0).unwrap(), Visibility::default());
        // Back west to (-1, 0): 2 enters, 3 leaves.
        let v = g.move_to(1, -5.0, 5.0).unwrap();
        assert_eq!((v.entered, v.left), (vec![2], vec![3]));
        // Symmetry: 2 sees 1, 3 does not.
        assert_eq!(near(&g, 2), [1]);
        assert_eq!(near(&g, 3), Vec::<EntityId>::new());
        let v = g.remove(1);
        assert_eq!(v.left, [2]);
        assert!(g.move_to(1, 0.0, 0.0).is_none());
    }

    #[test]
    fn joining_lists_everyone_in_range_and_reinserting_is_not_a_leave() {
        let mut g = Grid::new(10.0);
        g.insert(1, (), 0.5, 0.5);
        g.insert(2, (), 1.5, 0.5);
        let v = g.insert(3, (), 2.0, 2.0);
        assert_eq!(sorted(v.entered), [1, 2]);
        let v = g.insert(3, (), 3.0, 3.0);
        assert_eq!(v, Visibility::default());
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn extreme_and_non_finite_coordinates_do_not_panic() {
        let mut g = Grid::new(0.0);
        for (i, (x, y)) in [
            (f32::MAX, f32::MIN),
            (f32::NAN, 0.0),
            (f32::INFINITY, f32::NEG_INFINITY),
            (-0.0, 1e-30),
        ]
        .into_iter()
        .enumerate()
        {
            g.insert(i as u64, (), x, y);
            g.move_to(i as u64, y, x);
        }
        assert_eq!(g.len(), 4);
    }
}
