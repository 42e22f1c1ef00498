//! Comparing a runner with the CPU-only one, token by token: the CPU's greedy run, then the
//! other runner fed the CPU's tokens (teacher-forced), so that one near-tie ordered the other
//! way does not derail every later step. Used by the offload, ANE and GPU checks.

use crate::{Result, Runner};

/// Logit gap under which two engines may order the top two tokens differently.
pub const NEAR_TIE: f32 = 1.0;

/// The opening of the GPL-3 preamble: long enough (over 64 tokens) to reach the offload thresholds.
pub const PROMPT: &str = "The GNU General Public License is a free, copyleft license for software and other kinds \
of works. The licenses for most software and other practical works are designed to take away your freedom \
to share and change the works. By contrast, the GNU General Public License is intended to guarantee your \
freedom to share and change all versions of a program, to make sure it remains free software for all its \
users. We, the Free Software Foundation, use the GNU General Public License for most of our software; it \
applies also to any other work released this way by its authors. You can apply it to your programs, too.";

/// The top token of `logits` and its lead over the runner-up.
pub fn top2(logits: &[f32]) -> (u32, f32) {
    let l = logits;
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.select_nth_unstable_by(1, |&a, &b| l[b].total_cmp(&l[a]));
    let (a, b) = if l[idx[0]] >= l[idx[1]] { (idx[0], idx[1]) } else { (idx[1], idx[0]) };
    (a as u32, l[a] - l[b])
}

/// One step of a greedy run: the token and its lead over the runner-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The top token.
    pub token: u32,
    /// Its logit minus the second's.
    pub lead: f32,
}

/// `steps` greedy steps of `r` after `prompt` (prefilled in batches of 512).
pub fn greedy_steps(r: &Runner, prompt: &[u32], steps: usize) -> Result<Vec<Step>> {
    let mut cache = r.new_cache(prompt.len() + steps + 1);
    let mut logits = crate::generate::prefill(r, &mut cache, prompt, 512)?;
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let (token, lead) = top2(&logits);
        out.push(Step { token, lead });
        logits = r.forward(&mut cache, &[token], 0..1)?;
    }
    Ok(out)
}

/// How a runner followed a reference run.
#[derive(Debug, Default)]
pub struct Agreement {
    /// Steps whose top token differs where the reference's lead was under [`NEAR_TIE`].
    pub near_ties: usize,
    /// The largest reference lead among those.
    pub worst_tie: f32,
    /// Steps whose top token differs by a clear margin: (step, its token, the reference's, the reference's lead).
    pub differences: Vec<(usize, u32, u32, f32)>,
    /// The first step whose logits were not all finite.
    pub non_finite: Option<usize>,
}

/// `r` fed the reference's tokens after `prompt`: its top token at every step against the reference's.
pub fn follow(r: &Runner, prompt: &[u32], reference: &[Step]) -> Result<Agreement> {
    let mut cache = r.new_cache(prompt.len() + reference.len() + 1);
    let mut logits = crate::generate::prefill(r, &mut cache, prompt, 512)?;
    let mut a = Agreement::default();
    for (step, want) in reference.iter().enumerate() {
        if a.non_finite.is_none() && !logits.iter().all(|v| v.is_finite()) {
            a.non_finite = Some(step);
        }
        let (top, _) = top2(&logits);
        if top != want.token {
            if want.lead < NEAR_TIE {
                a.near_ties += 1;
                a.worst_tie = a.worst_tie.max(want.lead);
            } else {
                a.differences.push((step, top, want.token, want.lead));
            }
        }
        logits = r.forward(&mut cache, &[want.token], 0..1)?;
    }
    Ok(a)
}
