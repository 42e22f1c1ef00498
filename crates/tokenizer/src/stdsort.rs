//! The order GCC's `std::sort` leaves equal elements in.
//!
//! llama.cpp orders its special-token cache with `std::sort` by text length,
//! which is not stable: among tokens of equal length the order is whatever
//! libstdc++'s introsort produces. That order decides which of two equally long
//! special tokens claims text first, and whether LSTRIP/RSTRIP whitespace goes
//! (e.g. "\n\n" vs "  " in Gemma with Phi-3 style RSTRIP). We reproduce
//! libstdc++'s algorithm (introsort, median-of-three, heapsort fallback, final
//! insertion sort) so the order is the same as llama.cpp built with GCC.

/// Sort `v` like libstdc++'s `std::sort(v.begin(), v.end(), less)`.
pub(crate) fn sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let n = v.len();
    if n < 2 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, 0, n, depth, less);
    final_insertion_sort(v, less);
}

const THRESHOLD: usize = 16;

fn introsort_loop<T: Copy>(v: &mut [T], first: usize, mut last: usize, mut depth: usize, less: &impl Fn(&T, &T) -> bool) {
    while last - first > THRESHOLD {
        if depth == 0 {
            heap_sort(&mut v[first..last], less);
            return;
        }
        depth -= 1;
        let mid = first + (last - first) / 2;
        move_median_to_first(v, first, first + 1, mid, last - 1, less);
        let cut = unguarded_partition(v, first + 1, last, first, less);
        introsort_loop(v, cut, last, depth, less);
        last = cut;
    }
}

fn move_median_to_first<T: Copy>(v: &mut [T], result: usize, a: usize, b: usize, c: usize, less: &impl Fn(&T, &T) -> bool) {
    let pick = if less(&v[a], &v[b]) {
        if less(&v[b], &v[c]) {
            b
        } else if less(&v[a], &v[c]) {
            c
        } else {
            a
        }
    } else if less(&v[a], &v[c]) {
        a
    } else if less(&v[b], &v[c]) {
        c
    } else {
        b
    };
    v.swap(result, pick);
}

fn unguarded_partition<T: Copy>(v: &mut [T], mut first: usize, mut last: usize, pivot: usize, less: &impl Fn(&T, &T) -> bool) -> usize {
    loop {
        while less(&v[first], &v[pivot]) {
            first += 1;
        }
        last -= 1;
        while less(&v[pivot], &v[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        v.swap(first, last);
        first += 1;
    }
}

fn final_insertion_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let n = v.len();
    let head = n.min(THRESHOLD);
    // Guarded insertion sort of the head, then unguarded for the rest (the
    // head's minimum acts as the sentinel).
    for i in 1..head {
        let val = v[i];
        if less(&val, &v[0]) {
            v.copy_within(0..i, 1);
            v[0] = val;
        } else {
            linear_insert(v, i, less);
        }
    }
    for i in head..n {
        linear_insert(v, i, less);
    }
}

fn linear_insert<T: Copy>(v: &mut [T], mut last: usize, less: &impl Fn(&T, &T) -> bool) {
    let val = v[last];
    while less(&val, &v[last - 1]) {
        v[last] = v[last - 1];
        last -= 1;
    }
    v[last] = val;
}

fn heap_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let len = v.len();
    let mut parent = (len - 2) / 2;
    loop {
        let val = v[parent];
        adjust_heap(v, parent, len, val, less);
        if parent == 0 {
            break;
        }
        parent -= 1;
    }
    let mut last = len;
    while last > 1 {
        last -= 1;
        let val = v[last];
        v[last] = v[0];
        adjust_heap(&mut v[..last], 0, last, val, less);
    }
}

fn adjust_heap<T: Copy>(v: &mut [T], mut hole: usize, len: usize, val: T, less: &impl Fn(&T, &T) -> bool) {
    let top = hole;
    let mut child = hole;
    while child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if less(&v[child], &v[child - 1]) {
            child -= 1;
        }
        v[hole] = v[child];
        hole = child;
    }
    if len & 1 == 0 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        v[hole] = v[child - 1];
        hole = child - 1;
    }
    // push_heap
    let mut parent = hole.wrapping_sub(1) / 2;
    while hole > top && less(&v[parent], &val) {
        v[hole] = v[parent];
        hole = parent;
        parent = hole.wrapping_sub(1) / 2;
    }
    v[hole] = val;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts() {
        let mut seed = 7u64;
        for n in [0usize, 1, 2, 5, 16, 17, 100, 1000, 5000] {
            let mut v: Vec<(u32, u32)> = (0..n as u32)
                .map(|i| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((seed >> 40) as u32 % 7, i)
                })
                .collect();
            sort(&mut v, &|a, b| a.0 > b.0);
            assert!(v.windows(2).all(|w| w[0].0 >= w[1].0));
            let mut ids: Vec<u32> = v.iter().map(|x| x.1).collect();
            ids.sort();
            assert_eq!(ids, (0..n as u32).collect::<Vec<_>>());
        }
        // The heap fallback (depth limit 0) also sorts.
        let mut v: Vec<u32> = (0..100).rev().collect();
        heap_sort(&mut v, &|a, b| a < b);
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    /// Order of equal keys as produced by g++ 12 / libstdc++ for this input
    /// (keys i*7 % 5 for i in 0..40, sorted descending by key).
    #[test]
    fn matches_libstdcxx_order() {
        let mut v: Vec<(u32, u32)> = (0..40u32).map(|i| (i * 7 % 5, i)).collect();
        sort(&mut v, &|a, b| a.0 > b.0);
        let ids: Vec<u32> = v.iter().map(|x| x.1).collect();
        assert_eq!(ids, LIBSTDCXX_40);
    }

    const LIBSTDCXX_40: [u32; 40] = [
        17, 2, 37, 22, 7, 32, 27, 12, 9, 24, 14, 29, 19, 34, 4, 39, 21, 1, 26, 31, 36, 16, 11, 6, 18, 23, 38, 13, 28, 3, 8, 33, 0, 20,
        5, 35, 10, 30, 15, 25,
    ];
}
