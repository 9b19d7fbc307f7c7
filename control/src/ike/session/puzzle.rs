//! The initiator's puzzle work, off the caller's thread (RFC 8019 §7.1.2).
//!
//! Solving a puzzle is pure CPU work that can take seconds at high difficulty, so the session
//! does not do it inside [`Session::handle`]: it hands out a [`PuzzleJob`] (as
//! [`Output::SolvePuzzle`]) that owns everything it needs, the caller runs
//! [`PuzzleJob::solve`] wherever it likes (a worker thread) and gives the [`PuzzleAnswer`] back
//! with [`Session::puzzle_solved`], which sends the IKE_SA_INIT retry with N(COOKIE) and PS.
//!
//! A job is tied to one attempt of one session: the session's initiator SPI (kept across the
//! retries, RFC 7296 §2.6) and a counter bumped for each job. An answer for another session, or
//! for an attempt the session has moved past, is refused with [`SessionError::StalePuzzle`].

use super::*;
use crate::ike::cookie::{MAX_SOLVE_DIFFICULTY, Puzzle, SolveError, solve_puzzle};

/// A puzzle to solve for a session's IKE_SA_INIT retry (RFC 8019 §7.1.2). `Send + 'static`:
/// it owns a copy of the cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PuzzleJob {
    pub(super) spi_i: u64,
    pub(super) attempt: u32,
    pub(super) puzzle: Puzzle,
    pub(super) cookie: Vec<u8>,
}

/// The result of a [`PuzzleJob`], for [`Session::puzzle_solved`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PuzzleAnswer {
    pub(super) spi_i: u64,
    pub(super) attempt: u32,
    /// PS payload data (four keys, RFC 8019 §7.1.3), or why the work was given up.
    pub(super) result: Result<Vec<u8>, SolveError>,
}

impl PuzzleJob {
    /// The initiator SPI of the session the job belongs to (unchanged by the retry, RFC 7296
    /// §2.6), so a caller with many sessions can route the answer.
    pub fn spi_i(&self) -> u64 {
        self.spi_i
    }

    /// The puzzle: PRF and difficulty.
    pub fn puzzle(&self) -> Puzzle {
        self.puzzle
    }

    /// Finds four keys whose PRF over the cookie ends in enough zero bits (RFC 8019 §7.1.3).
    /// Pure CPU, no I/O; the work is bounded (see [`crate::ike::cookie::solve_puzzle`]).
    #[must_use]
    pub fn solve(self) -> PuzzleAnswer {
        PuzzleAnswer {
            spi_i: self.spi_i,
            attempt: self.attempt,
            result: solve_puzzle(self.puzzle, &self.cookie),
        }
    }
}

impl PuzzleAnswer {
    /// The initiator SPI of the session the answer belongs to.
    pub fn spi_i(&self) -> u64 {
        self.spi_i
    }
}

impl Session {
    /// RFC 8019 §7.1.2: the responder asked for a cookie and this puzzle. A puzzle harder than
    /// we solve fails the session at once; otherwise the session waits for the caller to solve
    /// it (no request is outstanding then, so no exchange timeout runs).
    pub(super) fn start_puzzle(
        &mut self,
        puzzle: Puzzle,
        cookie: Vec<u8>,
    ) -> Result<Vec<Output>, SessionError> {
        if puzzle.difficulty > MAX_SOLVE_DIFFICULTY {
            return Ok(self.fail(FailReason::PuzzleRefused(puzzle.difficulty), Vec::new()));
        }
        if !matches!(self.state, State::InitSent { .. }) {
            return Err(SessionError::Internal("puzzle outside IKE_SA_INIT"));
        }
        let State::InitSent { ke } = core::mem::replace(&mut self.state, State::Failed) else {
            return Err(SessionError::Internal("puzzle outside IKE_SA_INIT"));
        };
        self.state = State::Solving { ke };
        self.cookie = Some(cookie.clone());
        self.puzzle_solution = None;
        self.puzzle_attempt = self.puzzle_attempt.wrapping_add(1);
        Ok(vec![Output::SolvePuzzle(PuzzleJob {
            spi_i: self.spi_i,
            attempt: self.puzzle_attempt,
            puzzle,
            cookie,
        })])
    }

    /// Continues after the caller solved the [`PuzzleJob`] this session handed out: sends the
    /// IKE_SA_INIT request again with N(COOKIE) and the PS payload (RFC 8019 §7.1.2), or, if
    /// the work was given up, fails with [`FailReason::PuzzleRefused`].
    ///
    /// # Errors
    /// [`SessionError::StalePuzzle`] for an answer to another session's job or to an earlier
    /// job of this one (nothing changes); [`SessionError::Closed`] after a failure; local
    /// faults.
    pub fn puzzle_solved(
        &mut self,
        answer: PuzzleAnswer,
        now: Instant,
    ) -> Result<Vec<Output>, SessionError> {
        if matches!(self.state, State::Failed | State::Deleted) {
            return Err(SessionError::Closed);
        }
        if !matches!(self.state, State::Solving { .. })
            || answer.spi_i != self.spi_i
            || answer.attempt != self.puzzle_attempt
        {
            return Err(SessionError::StalePuzzle);
        }
        let State::Solving { ke } = core::mem::replace(&mut self.state, State::Failed) else {
            return Err(SessionError::StalePuzzle);
        };
        let out = match answer.result {
            Ok(ps) => {
                let group = ke.group();
                self.state = State::InitSent { ke };
                self.puzzle_solution = Some(ps);
                // The retry is a new request: its exchange timeout starts now.
                self.last_activity = Some(now);
                vec![Output::Send(self.init_message(group)?)]
            }
            Err(SolveError::TooHard(d) | SolveError::GaveUp(d)) => {
                self.fail(FailReason::PuzzleRefused(d), Vec::new())
            }
        };
        Ok(self.emit(out))
    }
}
