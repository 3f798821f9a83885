//! The area-of-interest grid: who is near whom, against a brute-force check of every pair, and
//! which moves mark cells changed. (The world's enter and leave notices over loopback are in
//! `world.rs`.)

use proptest::prelude::*;
use zerocast_world::aoi::{around, near, Cells, EntityId};

/// Who `id` sees, by brute force over every entity's position.
fn brute(cells: &Cells, all: &[(EntityId, [f32; 3])], id: EntityId) -> Vec<EntityId> {
    let me = cells.get(id).unwrap().cell;
    let mut v: Vec<_> = all
        .iter()
        .filter(|&&(e, p)| e != id && near(me, cells.cell_of(p[0], p[1])))
        .map(|&(e, _)| e)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn seen_by(cells: &Cells, id: EntityId) -> Vec<EntityId> {
    let mut v = Vec::new();
    cells.near_ids(cells.get(id).unwrap().cell, id, &mut v);
    v.sort_unstable();
    v
}

#[test]
fn neighbours_are_the_3x3_cells_and_nobody_farther() {
    let mut cells = Cells::new(10.0);
    cells.place(1, [5.0, 5.0, 0.0]);
    cells.place(2, [15.0, 15.0, 0.0]); // diagonal neighbour cell
    cells.place(3, [25.0, 5.0, 0.0]); // two cells away
    cells.place(4, [9.99, 0.0, 0.0]); // same cell as 1
    assert_eq!(seen_by(&cells, 1), [2, 4]);
    assert_eq!(seen_by(&cells, 2), [1, 3, 4]);
    assert_eq!(seen_by(&cells, 3), [2]);
    assert_eq!(around((0, 0)).count(), 9);
}

#[test]
fn crossing_a_cell_marks_both_and_moving_inside_one_marks_none() {
    let mut cells = Cells::new(10.0);
    cells.place(1, [5.0, 5.0, 0.0]);
    cells.set_epoch(1);
    cells.place(1, [6.0, 6.0, 0.0]);
    assert!(
        !cells.changed_near((0, 0), 0),
        "a move inside a cell changes no one's view"
    );
    cells.place(1, [45.0, 5.0, 0.0]);
    assert!(cells.changed_near((0, 0), 0) && cells.changed_near((4, 0), 0));
    assert!(!cells.changed_near((0, 0), 1), "not after epoch 1");
    assert!(
        !cells.changed_near((2, 0), 0),
        "cells between are untouched"
    );
    cells.set_epoch(2);
    cells.forget_changes(1);
    assert!(!cells.changed_near((4, 0), 0), "forgotten");
    assert!(cells.remove(1));
    assert!(!cells.remove(1));
    assert!(cells.changed_near((4, 0), 1));
    cells.set_epoch(1);
    cells.place(2, [95.0, 5.0, 0.0]);
    assert!(cells.changed_near((9, 0), 1), "epochs never go back");
    assert!(!cells.is_empty());
}

#[test]
fn extreme_and_non_finite_positions_land_in_a_cell_without_overflow() {
    let mut cells = Cells::new(f32::NAN);
    for (i, x) in [f32::MAX, f32::MIN, f32::NAN, f32::INFINITY, -0.0]
        .into_iter()
        .enumerate()
    {
        cells.place(i as u64, [x, x, 0.0]);
    }
    assert_eq!(cells.len(), 5);
    let mut v = Vec::new();
    cells.near_ids((i32::MAX, i32::MIN), u64::MAX, &mut v);
    assert!(near((i32::MAX, i32::MAX), (i32::MAX, i32::MAX - 1)));
    assert!(!near((i32::MAX, 0), (i32::MIN, 0)));
}

proptest! {
    /// After any sequence of placements and removals, everyone's neighbours are exactly the
    /// brute-force answer, and every entity is listed once.
    #[test]
    fn near_ids_matches_brute_force(
        ops in prop::collection::vec((0u64..40, -50.0f32..250.0, -50.0f32..250.0, any::<bool>()), 1..300)
    ) {
        let mut cells = Cells::new(25.0);
        let mut all: Vec<(EntityId, [f32; 3])> = Vec::new();
        for (id, x, y, remove) in ops {
            all.retain(|&(e, _)| e != id);
            if remove {
                cells.remove(id);
            } else {
                cells.place(id, [x, y, 0.0]);
                all.push((id, [x, y, 0.0]));
            }
        }
        prop_assert_eq!(cells.len(), all.len());
        for &(id, _) in &all {
            prop_assert_eq!(seen_by(&cells, id), brute(&cells, &all, id));
        }
    }
}
