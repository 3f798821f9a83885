//! Area of interest: which entities are in which cell of a square grid, and which cells had
//! someone come or go since the last look. Two entities see each other when their cells are
//! at most one apart in both directions (the 3×3 cells around each). Sans-IO.
//!
//! Positions are 3-D but only `x` and `y` (the ground plane) choose the cell; a cell is
//! `cell_size` wide.

use rustc_hash::FxHashMap;

/// An entity's id (a player's: its session's id, unique across every shard of a world).
pub type EntityId = u64;

/// A cell: `(x / cell_size, y / cell_size)`, rounded down.
pub type Cell = (i32, i32);

/// The 3×3 cells around `c`, `c` included.
pub fn around((cx, cy): Cell) -> impl Iterator<Item = Cell> {
    (-1..=1)
        .flat_map(move |dx| (-1..=1).map(move |dy| (cx.saturating_add(dx), cy.saturating_add(dy))))
}

/// True if `a` and `b` see each other (`b` is among the 3×3 cells around `a`).
pub fn near(a: Cell, b: Cell) -> bool {
    (i64::from(a.0) - i64::from(b.0)).abs() <= 1 && (i64::from(a.1) - i64::from(b.1)).abs() <= 1
}

/// Where an entity is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// Its latest position.
    pub pos: [f32; 3],
    /// The cell of that position.
    pub cell: Cell,
}

/// The grid. Invariant: every entity is listed in the member list of its cell, and only
/// there; no member list is empty.
#[derive(Debug, Default)]
pub struct Cells {
    cell_size: f32,
    entities: FxHashMap<EntityId, Seen>,
    members: FxHashMap<Cell, Vec<EntityId>>,
    /// Cells an entity entered or left, with the epoch of the latest such change.
    changed: FxHashMap<Cell, u64>,
    /// The epoch changes are stamped with now (see [`set_epoch`](Self::set_epoch)).
    epoch: u64,
}

impl Cells {
    /// An empty grid with cells `cell_size` wide (at least 1; a non-finite size is 1).
    pub fn new(cell_size: f32) -> Self {
        Self {
            cell_size: if cell_size.is_finite() {
                cell_size.max(1.0)
            } else {
                1.0
            },
            ..Self::default()
        }
    }

    /// The cell holding `(x, y)`. Non-finite coordinates land in cell (0, 0); the world
    /// refuses them before they get here.
    pub fn cell_of(&self, x: f32, y: f32) -> Cell {
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

    /// Entities in the grid.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// True without entities.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Where `id` is.
    pub fn get(&self, id: EntityId) -> Option<Seen> {
        self.entities.get(&id).copied()
    }

    /// Puts `id` at `pos` (adding it if new); returns its cell. A change of cell marks both
    /// cells changed.
    pub fn place(&mut self, id: EntityId, pos: [f32; 3]) -> Cell {
        let cell = self.cell_of(pos[0], pos[1]);
        let old = self.entities.insert(id, Seen { pos, cell }).map(|s| s.cell);
        if old != Some(cell) {
            if let Some(old) = old {
                self.unlist(id, old);
            }
            self.members.entry(cell).or_default().push(id);
            self.changed.insert(cell, self.epoch);
        }
        cell
    }

    /// Takes `id` out; its cell is marked changed. False if it was not in.
    pub fn remove(&mut self, id: EntityId) -> bool {
        match self.entities.remove(&id) {
            Some(seen) => {
                self.unlist(id, seen.cell);
                true
            }
            None => false,
        }
    }

    fn unlist(&mut self, id: EntityId, cell: Cell) {
        if let Some(m) = self.members.get_mut(&cell) {
            if let Some(i) = m.iter().position(|&e| e == id) {
                m.swap_remove(i);
            }
            if m.is_empty() {
                self.members.remove(&cell);
            }
        }
        self.changed.insert(cell, self.epoch);
    }

    /// Appends to `out` the entities in the 3×3 cells around `cell`, `except` excluded, in no
    /// particular order.
    pub fn near_ids(&self, cell: Cell, except: EntityId, out: &mut Vec<EntityId>) {
        for c in around(cell) {
            if let Some(m) = self.members.get(&c) {
                out.extend(m.iter().copied().filter(|&e| e != except));
            }
        }
    }

    /// The entities in `cell`, in no particular order.
    pub fn members(&self, cell: Cell) -> &[EntityId] {
        self.members.get(&cell).map_or(&[], Vec::as_slice)
    }

    /// Every entity and where it is, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (EntityId, Seen)> + '_ {
        self.entities.iter().map(|(&id, &s)| (id, s))
    }

    /// The cells with someone in them, in no particular order.
    pub fn occupied(&self) -> impl Iterator<Item = Cell> + '_ {
        self.members.keys().copied()
    }

    /// Stamps the changes made from now on with `epoch` (a tick's number, say); epochs never
    /// go back.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    /// True if someone came into or went out of the 3×3 cells around `cell` in an epoch after
    /// `since`.
    pub fn changed_near(&self, cell: Cell, since: u64) -> bool {
        !self.changed.is_empty()
            && around(cell).any(|c| self.changed.get(&c).is_some_and(|&e| e > since))
    }

    /// Forgets the changes of epochs up to `epoch`.
    pub fn forget_changes(&mut self, epoch: u64) {
        self.changed.retain(|_, e| *e > epoch);
    }
}
