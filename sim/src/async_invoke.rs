//! Asynchronous invocation: StartAsyncInvoke (`POST /async-invoke`),
//! GetAsyncInvoke (`GET /async-invoke/{invocationArn}`) and ListAsyncInvokes
//! (`GET /async-invoke`). A job runs for a simulated time taken from the
//! catalog (`async_job`: a base plus a share per second of video), scaled by
//! `time_scale` and measured on the simulator's clock, so a test advances the
//! clock instead of waiting. It is InProgress until then, and Completed (or
//! Failed, for a scripted `job-failure`) after; its output goes under the
//! caller's S3 prefix, in a folder named after the invocation id. Nothing is
//! written to S3.
//!
//! Jobs belong to the one simulated account, whoever signed the request.

use aws_smithy_types::date_time::{DateTime, Format};
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use bedrock_wire::error::ErrorType;
use bedrock_wire::operation::RuntimeOperation;
use regex_lite::Regex;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::api::{admit, fault_error, finish, json_response, Admitted, Subject};
use crate::catalog::Model;
use crate::error::SimError;
use crate::face::Face;
use crate::faults::{FaultKind, Target};
use crate::SimState;

const S3_URI_PATTERN: &str = r"s3://[a-z0-9][\.\-a-z0-9]{1,61}[a-z0-9](/.*)?";
const INVOCATION_ARN_PATTERN: &str =
    r"arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:async-invoke/[a-z0-9]{12}";
const MODEL_ID_PATTERN: &str = r"[a-zA-Z_\.\-/0-9:]+";
const TOKEN_PATTERN: &str = r"[!-~]*";
const KMS_PATTERN: &str = r"arn:aws(-[^:]+)?:kms:[a-zA-Z0-9-]*:[0-9]{12}:((key/[a-zA-Z0-9-]{36})|(alias/[a-zA-Z0-9-_/]+))";

fn regex(pattern: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).ok()
}

static S3_URI: LazyLock<Option<Regex>> = LazyLock::new(|| regex(S3_URI_PATTERN));
static INVOCATION_ARN: LazyLock<Option<Regex>> = LazyLock::new(|| regex(INVOCATION_ARN_PATTERN));
static MODEL_ID: LazyLock<Option<Regex>> = LazyLock::new(|| regex(MODEL_ID_PATTERN));
static TOKEN: LazyLock<Option<Regex>> = LazyLock::new(|| regex(TOKEN_PATTERN));
static KMS: LazyLock<Option<Regex>> = LazyLock::new(|| regex(KMS_PATTERN));

fn is(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|re| re.is_match(s))
}

fn constraint(value: impl std::fmt::Display, field: &str, rule: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {rule}"
    ))
}

fn pattern(value: &str, field: &str, pattern: &str) -> SimError {
    constraint(
        value,
        field,
        &format!("Member must satisfy regular expression pattern: {pattern}"),
    )
}

fn null(field: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
    ))
}

/// The status of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    Failed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::InProgress => "InProgress",
            Status::Completed => "Completed",
            Status::Failed => "Failed",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [Status::InProgress, Status::Completed, Status::Failed]
            .into_iter()
            .find(|st| st.name() == s)
    }
}

/// One async invocation.
#[derive(Debug, Clone)]
struct Job {
    arn: String,
    model_arn: String,
    token: Option<String>,
    /// What the request asked for, so a retried token can be told from a new
    /// request reusing it.
    fingerprint: [u8; 32],
    submitted: Duration,
    runs_for: Duration,
    failure: Option<String>,
    output: Value,
}

impl Job {
    fn status(&self, now: Duration) -> Status {
        if now < self.submitted + self.runs_for {
            Status::InProgress
        } else if self.failure.is_some() {
            Status::Failed
        } else {
            Status::Completed
        }
    }

    /// The job as GetAsyncInvoke and ListAsyncInvokes describe it.
    fn describe(&self, state: &SimState, now: Duration) -> Value {
        let status = self.status(now);
        let time = |at: Duration| timestamp(state, at);
        let mut v = Map::new();
        v.insert("invocationArn".into(), json!(self.arn));
        v.insert("modelArn".into(), json!(self.model_arn));
        if let Some(token) = &self.token {
            v.insert("clientRequestToken".into(), json!(token));
        }
        v.insert("status".into(), json!(status.name()));
        v.insert("submitTime".into(), json!(time(self.submitted)));
        if status == Status::InProgress {
            v.insert("lastModifiedTime".into(), json!(time(self.submitted)));
        } else {
            let end = time(self.submitted + self.runs_for);
            v.insert("lastModifiedTime".into(), json!(end));
            v.insert("endTime".into(), json!(end));
        }
        if status == Status::Failed {
            v.insert("failureMessage".into(), json!(self.failure));
        }
        v.insert("outputDataConfig".into(), self.output.clone());
        Value::Object(v)
    }
}

/// The wall-clock time of simulated instant `at`, to the millisecond: the
/// precision timestamps are reported in, so filters compare what callers saw.
fn wall_time(state: &SimState, at: Duration) -> DateTime {
    let since_epoch = state
        .clock
        .wall(at)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    DateTime::from_millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

/// An ISO 8601 timestamp of simulated instant `at`.
fn timestamp(state: &SimState, at: Duration) -> String {
    wall_time(state, at)
        .fmt(Format::DateTime)
        .unwrap_or_default()
}

/// Jobs remembered; past this the oldest are forgotten, so a long benchmark
/// cannot grow the simulator without bound.
pub const MAX_JOBS: usize = 10_000;

/// Every async invocation the simulated account made (the newest [`MAX_JOBS`]).
#[derive(Debug, Default)]
pub struct Jobs {
    // A std mutex: every critical section is short and none spans an await.
    inner: Mutex<JobsInner>,
}

#[derive(Debug, Default)]
struct JobsInner {
    /// In submission order, oldest first.
    jobs: VecDeque<Job>,
    /// Client request token -> the invocation it started.
    by_token: HashMap<String, String>,
}

/// What adding a job did.
enum Added {
    New(String),
    /// The token was seen with the same request: its job.
    Existing(String),
    /// The token was seen with a different request.
    Conflict,
}

impl Jobs {
    fn with<R>(&self, f: impl FnOnce(&mut JobsInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn add(&self, job: Job) -> Added {
        self.with(|inner| {
            if let Some(token) = &job.token {
                let seen = inner
                    .by_token
                    .get(token)
                    .and_then(|arn| inner.jobs.iter().find(|j| &j.arn == arn));
                if let Some(existing) = seen {
                    return if existing.fingerprint == job.fingerprint {
                        Added::Existing(existing.arn.clone())
                    } else {
                        Added::Conflict
                    };
                }
                inner.by_token.insert(token.clone(), job.arn.clone());
            }
            let arn = job.arn.clone();
            inner.jobs.push_back(job);
            while inner.jobs.len() > MAX_JOBS {
                if let Some(old) = inner.jobs.pop_front() {
                    if let Some(token) = old.token {
                        inner.by_token.remove(&token);
                    }
                }
            }
            Added::New(arn)
        })
    }

    fn get(&self, arn: &str) -> Option<Job> {
        self.with(|inner| inner.jobs.iter().find(|j| j.arn == arn).cloned())
    }

    fn all(&self) -> Vec<Job> {
        self.with(|inner| inner.jobs.iter().cloned().collect())
    }

    /// How many jobs are remembered.
    pub fn len(&self) -> usize {
        self.with(|inner| inner.jobs.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every job.
    pub fn clear(&self) {
        self.with(|inner| *inner = JobsInner::default());
    }
}

/// A new invocation id: 12 lowercase letters and digits, as Bedrock's.
fn invocation_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..12)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

/// Seconds of video a Nova Reel request asks for, after Bedrock's checks.
fn reel_seconds(model: &Model, input: &Value) -> Result<f64, SimError> {
    let bad = |detail: String| SimError::malformed(detail);
    let obj = input
        .as_object()
        .ok_or_else(|| bad("#: expected type: JSONObject".into()))?;
    let task = obj
        .get("taskType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("#: required key [taskType] not found".into()))?;
    let multi_shot = model.id != "amazon.nova-reel-v1:0";
    let config = obj
        .get("videoGenerationConfig")
        .cloned()
        .unwrap_or(json!({}));
    if let Some(fps) = config.get("fps") {
        if fps != 24 {
            return Err(bad(format!(
                "#/videoGenerationConfig/fps: {fps} is not a valid enum value"
            )));
        }
    }
    if let Some(d) = config.get("dimension") {
        if d != "1280x720" {
            return Err(bad(format!(
                "#/videoGenerationConfig/dimension: {d} is not a valid enum value"
            )));
        }
    }
    let text = |params: &str, max: usize| -> Result<(), SimError> {
        let text = obj
            .get(params)
            .and_then(|p| p.get("text"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("#/{params}: required key [text] not found")))?;
        let len = text.chars().count();
        if len == 0 || len > max {
            return Err(bad(format!(
                "#/{params}/text: expected length between 1 and {max}, actual: {len}"
            )));
        }
        Ok(())
    };
    let duration = config.get("durationSeconds").and_then(Value::as_u64);
    match task {
        "TEXT_VIDEO" => {
            text("textToVideoParams", 512)?;
            match duration {
                None | Some(6) => Ok(6.0),
                Some(d) => Err(bad(format!(
                    "#/videoGenerationConfig/durationSeconds: {d} is not a valid value for TEXT_VIDEO, which makes 6-second videos"
                ))),
            }
        }
        "MULTI_SHOT_AUTOMATED" if multi_shot => {
            text("multiShotAutomatedParams", 4000)?;
            match duration {
                Some(d) if (12..=120).contains(&d) && d % 6 == 0 => Ok(d as f64),
                Some(d) => Err(bad(format!(
                    "#/videoGenerationConfig/durationSeconds: {d} must be a multiple of 6 from 12 to 120"
                ))),
                None => Err(bad(
                    "#/videoGenerationConfig: required key [durationSeconds] not found".into(),
                )),
            }
        }
        "MULTI_SHOT_MANUAL" if multi_shot => {
            let shots = obj
                .get("multiShotManualParams")
                .and_then(|p| p.get("shots"))
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    bad("#/multiShotManualParams: required key [shots] not found".into())
                })?;
            if !(2..=20).contains(&shots.len()) {
                return Err(bad(format!(
                    "#/multiShotManualParams/shots: expected between 2 and 20 items, actual: {}",
                    shots.len()
                )));
            }
            for (i, shot) in shots.iter().enumerate() {
                let len = shot["text"].as_str().map_or(0, |t| t.chars().count());
                if len == 0 || len > 512 {
                    return Err(bad(format!(
                        "#/multiShotManualParams/shots/{i}/text: expected length between 1 and 512, actual: {len}"
                    )));
                }
            }
            Ok(6.0 * shots.len() as f64)
        }
        other => Err(bad(format!(
            "#/taskType: {other} is not a valid enum value"
        ))),
    }
}

/// A StartAsyncInvoke body, checked.
#[derive(Debug)]
struct StartRequest {
    model_id: String,
    token: Option<String>,
    model_input: Value,
    output: Value,
    s3_uri: String,
}

fn read_start(body: &Value) -> Result<StartRequest, SimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| SimError::malformed("the body must be a JSON object"))?;
    let model_id = obj
        .get("modelId")
        .and_then(Value::as_str)
        .ok_or_else(|| null("modelId"))?;
    if model_id.is_empty() || model_id.len() > 256 || !is(&MODEL_ID, model_id) {
        return Err(pattern(model_id, "modelId", MODEL_ID_PATTERN));
    }
    let token = match obj.get("clientRequestToken") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.is_empty() && t.len() <= 256 && is(&TOKEN, t) => {
            Some(t.clone())
        }
        Some(other) => {
            return Err(pattern(
                other.as_str().unwrap_or_default(),
                "clientRequestToken",
                TOKEN_PATTERN,
            ))
        }
    };
    let model_input = obj
        .get("modelInput")
        .filter(|v| !v.is_null())
        .cloned()
        .ok_or_else(|| null("modelInput"))?;
    let output = obj
        .get("outputDataConfig")
        .filter(|v| !v.is_null())
        .ok_or_else(|| null("outputDataConfig"))?;
    let s3 = output
        .get("s3OutputDataConfig")
        .ok_or_else(|| null("outputDataConfig.s3OutputDataConfig"))?;
    let s3_uri = s3["s3Uri"]
        .as_str()
        .ok_or_else(|| null("outputDataConfig.s3OutputDataConfig.s3Uri"))?;
    if s3_uri.len() > 1024 || !is(&S3_URI, s3_uri) {
        return Err(pattern(
            s3_uri,
            "outputDataConfig.s3OutputDataConfig.s3Uri",
            S3_URI_PATTERN,
        ));
    }
    if let Some(kms) = s3.get("kmsKeyId").and_then(Value::as_str) {
        if !is(&KMS, kms) {
            return Err(pattern(
                kms,
                "outputDataConfig.s3OutputDataConfig.kmsKeyId",
                KMS_PATTERN,
            ));
        }
    }
    if let Some(owner) = s3.get("bucketOwner").and_then(Value::as_str) {
        if owner.len() != 12 || !owner.bytes().all(|b| b.is_ascii_digit()) {
            return Err(pattern(
                owner,
                "outputDataConfig.s3OutputDataConfig.bucketOwner",
                "[0-9]{12}",
            ));
        }
    }
    if let Some(tags) = obj.get("tags").and_then(Value::as_array) {
        if tags.len() > 200 {
            return Err(constraint(
                tags.len(),
                "tags",
                "Member must have length less than or equal to 200",
            ));
        }
        if let Some(i) = tags
            .iter()
            .position(|t| !t["key"].is_string() || !t["value"].is_string())
        {
            return Err(null(&format!("tags.{}.member.key", i + 1)));
        }
    }
    let mut s3_out = s3.clone();
    let prefix = s3_uri.trim_end_matches('/').to_owned();
    if let Some(o) = s3_out.as_object_mut() {
        o.insert("s3Uri".into(), json!(prefix));
    }
    Ok(StartRequest {
        model_id: model_id.to_owned(),
        token,
        model_input,
        output: json!({ "s3OutputDataConfig": s3_out }),
        s3_uri: prefix,
    })
}

/// `POST /async-invoke`
pub async fn start(State(state): State<Arc<SimState>>, request: Request) -> Response {
    let id = bedrock_wire::new_request_id();
    let result = serve_start(&state, &id, request).await;
    finish(&state, &id, result)
}

async fn serve_start(
    state: &Arc<SimState>,
    request_id: &str,
    request: Request,
) -> Result<Response, SimError> {
    let op = RuntimeOperation::StartAsyncInvoke;
    let Admitted { parts, json, .. } = admit(
        state,
        request_id,
        op,
        Subject::BodyField("modelId"),
        request,
    )
    .await?;
    let body = json.map_err(SimError::malformed)?;
    let start = read_start(&body)?;
    let invalid = || SimError::validation("The provided model identifier is invalid.");
    let resolved = state.catalog.resolve(&start.model_id).ok_or_else(invalid)?;
    let model = &resolved.model;
    if !model.async_invoke {
        return Err(SimError::validation(format!(
            "The provided model {} doesn't support asynchronous invocation (StartAsyncInvoke).",
            start.model_id
        )));
    }
    let seconds = reel_seconds(model, &start.model_input)?;
    let target = Target {
        face: Face::Bedrock,
        ids: &[&start.model_id],
        operation: op.label(),
        ..Target::default()
    };
    let fault = fault_error(state, &parts.headers, &target).await?;
    let failure = fault
        .filter(|f| f.fault == FaultKind::JobFailure)
        .map(|f| {
            f.message.unwrap_or_else(|| {
                "The model encountered an internal error while generating the output. Try your request again.".into()
            })
        });

    let job_time = model
        .async_job
        .map_or(0.0, |t| t.base_s + t.per_output_second_s * seconds);
    let runs_for = Duration::from_secs_f64((job_time * state.config.time_scale).max(0.0));
    let region = &state.config.region;
    let account = &state.config.account_id;
    let id = invocation_id();
    let mut fingerprint = Sha256::new();
    fingerprint.update(model.id.as_bytes());
    let mut canonical = Vec::new();
    bedrock_wire::canonical::write(&start.model_input, &mut canonical);
    fingerprint.update(&canonical);
    fingerprint.update(start.s3_uri.as_bytes());
    let job = Job {
        arn: format!("arn:aws:bedrock:{region}:{account}:async-invoke/{id}"),
        model_arn: format!("arn:aws:bedrock:{region}::foundation-model/{}", model.id),
        token: start.token,
        fingerprint: fingerprint.finalize().into(),
        submitted: state.clock.now(),
        runs_for,
        failure,
        output: {
            let mut out = start.output;
            out["s3OutputDataConfig"]["s3Uri"] = json!(format!("{}/{id}", start.s3_uri));
            out
        },
    };
    let arn = match state.jobs.add(job) {
        Added::New(arn) => {
            state.stats.async_job_started();
            arn
        }
        Added::Existing(arn) => arn,
        Added::Conflict => {
            return Err(SimError::modeled(
                ErrorType::Conflict,
                "The request with this client request token was already made with different parameters.",
            ))
        }
    };
    Ok(json_response(
        json!({ "invocationArn": arn }),
        HeaderMap::new(),
    ))
}

/// `GET /async-invoke/{invocationArn}`
pub async fn get(
    State(state): State<Arc<SimState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Response {
    let id = bedrock_wire::new_request_id();
    let result = match path {
        Ok(Path(arn)) => serve_get(&state, &id, &arn, request).await,
        Err(e) => Err(SimError::validation(format!(
            "The request path is invalid: {e}"
        ))),
    };
    finish(&state, &id, result)
}

async fn serve_get(
    state: &Arc<SimState>,
    request_id: &str,
    arn: &str,
    request: Request,
) -> Result<Response, SimError> {
    let op = RuntimeOperation::GetAsyncInvoke;
    let Admitted { parts, .. } = admit(state, request_id, op, Subject::None, request).await?;
    if !is(&INVOCATION_ARN, arn) {
        return Err(pattern(arn, "invocationArn", INVOCATION_ARN_PATTERN));
    }
    let target = Target {
        face: Face::Bedrock,
        operation: op.label(),
        ..Target::default()
    };
    fault_error(state, &parts.headers, &target).await?;
    let job = state.jobs.get(arn).ok_or_else(|| {
        SimError::validation(format!("The async invocation {arn} does not exist."))
    })?;
    Ok(json_response(
        job.describe(state, state.clock.now()),
        HeaderMap::new(),
    ))
}

/// ListAsyncInvokes' query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    submit_time_after: Option<String>,
    submit_time_before: Option<String>,
    status_equals: Option<String>,
    max_results: Option<String>,
    next_token: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<String>,
}

fn parse_time(value: &str, field: &str) -> Result<DateTime, SimError> {
    DateTime::from_str(value, Format::DateTime).map_err(|_| {
        SimError::validation(format!(
            "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must be a timestamp in ISO 8601 format"
        ))
    })
}

fn page_token(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("page:{offset}"))
}

fn page_offset(token: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("page:")?
        .parse()
        .ok()
}

/// `GET /async-invoke`
pub async fn list(State(state): State<Arc<SimState>>, request: Request) -> Response {
    let id = bedrock_wire::new_request_id();
    let result = serve_list(&state, &id, request).await;
    finish(&state, &id, result)
}

async fn serve_list(
    state: &Arc<SimState>,
    request_id: &str,
    request: Request,
) -> Result<Response, SimError> {
    let op = RuntimeOperation::ListAsyncInvokes;
    let Admitted { parts, .. } = admit(state, request_id, op, Subject::None, request).await?;
    let Query(q) = Query::<ListQuery>::try_from_uri(&parts.uri)
        .map_err(|e| SimError::validation(format!("The query string is invalid: {e}")))?;
    let after = q
        .submit_time_after
        .as_deref()
        .map(|v| parse_time(v, "submitTimeAfter"))
        .transpose()?;
    let before = q
        .submit_time_before
        .as_deref()
        .map(|v| parse_time(v, "submitTimeBefore"))
        .transpose()?;
    let status = q
        .status_equals
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                constraint(
                    s,
                    "statusEquals",
                    "Member must satisfy enum value set: [InProgress, Completed, Failed]",
                )
            })
        })
        .transpose()?;
    let max = match q.max_results.as_deref() {
        None => 1000,
        Some(m) => match m.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(constraint(
                    m,
                    "maxResults",
                    "Member must have value between 1 and 1000",
                ))
            }
        },
    };
    if let Some(by) = q.sort_by.as_deref() {
        if by != "SubmissionTime" {
            return Err(constraint(
                by,
                "sortBy",
                "Member must satisfy enum value set: [SubmissionTime]",
            ));
        }
    }
    let ascending = match q.sort_order.as_deref() {
        None | Some("Descending") => false,
        Some("Ascending") => true,
        Some(other) => {
            return Err(constraint(
                other,
                "sortOrder",
                "Member must satisfy enum value set: [Ascending, Descending]",
            ))
        }
    };
    let offset = match q.next_token.as_deref() {
        None => 0,
        Some(t) => page_offset(t)
            .ok_or_else(|| SimError::validation("The pagination token is invalid."))?,
    };
    let target = Target {
        face: Face::Bedrock,
        operation: op.label(),
        ..Target::default()
    };
    fault_error(state, &parts.headers, &target).await?;

    let now = state.clock.now();
    let secs = |at: Duration| wall_time(state, at);
    let mut jobs: Vec<Job> = state
        .jobs
        .all()
        .into_iter()
        .filter(|j| after.is_none_or(|a| secs(j.submitted) > a))
        .filter(|j| before.is_none_or(|b| secs(j.submitted) < b))
        .filter(|j| status.is_none_or(|s| j.status(now) == s))
        .collect();
    // Jobs are kept in submission order; the newest first unless asked.
    if !ascending {
        jobs.reverse();
    }
    let page: Vec<Value> = jobs
        .iter()
        .skip(offset)
        .take(max)
        .map(|j| j.describe(state, now))
        .collect();
    let mut out = json!({ "asyncInvokeSummaries": page });
    if offset + max < jobs.len() {
        out["nextToken"] = json!(page_token(offset + max));
    }
    Ok(json_response(out, HeaderMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn reel(id: &str) -> Arc<Model> {
        Catalog::embedded().resolve(id).unwrap().model
    }

    #[test]
    fn reel_inputs_are_checked_and_sized() {
        let v11 = reel("amazon.nova-reel-v1:1");
        let v10 = reel("amazon.nova-reel-v1:0");
        let text = json!({"taskType": "TEXT_VIDEO", "textToVideoParams": {"text": "A cat"},
            "videoGenerationConfig": {"durationSeconds": 6, "fps": 24, "dimension": "1280x720", "seed": 1}});
        assert_eq!(reel_seconds(&v11, &text).unwrap(), 6.0);
        let multi = json!({"taskType": "MULTI_SHOT_AUTOMATED", "multiShotAutomatedParams": {"text": "A day"},
            "videoGenerationConfig": {"durationSeconds": 24}});
        assert_eq!(reel_seconds(&v11, &multi).unwrap(), 24.0);
        assert!(
            reel_seconds(&v10, &multi).is_err(),
            "v1:0 makes single shots only"
        );
        let manual = json!({"taskType": "MULTI_SHOT_MANUAL", "multiShotManualParams": {"shots": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}});
        assert_eq!(reel_seconds(&v11, &manual).unwrap(), 18.0);
        let err = reel_seconds(&v11, &json!({"textToVideoParams": {"text": "x"}})).unwrap_err();
        assert!(err.message.contains("taskType"), "{}", err.message);
        let long =
            json!({"taskType": "TEXT_VIDEO", "textToVideoParams": {"text": "x".repeat(513)}});
        assert!(reel_seconds(&v11, &long).is_err());
        let odd = json!({"taskType": "MULTI_SHOT_AUTOMATED", "multiShotAutomatedParams": {"text": "A"},
            "videoGenerationConfig": {"durationSeconds": 13}});
        assert!(reel_seconds(&v11, &odd).is_err());
    }

    #[test]
    fn start_bodies_are_checked() {
        let ok = json!({"modelId": "amazon.nova-reel-v1:1", "modelInput": {},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://my-bucket/videos/"}},
            "clientRequestToken": "abc-123"});
        let start = read_start(&ok).unwrap();
        assert_eq!(start.s3_uri, "s3://my-bucket/videos");
        assert_eq!(start.token.as_deref(), Some("abc-123"));
        let mut bad = ok.clone();
        bad["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"] = json!("https://bucket/x");
        assert!(read_start(&bad).unwrap_err().message.contains("s3Uri"));
        let mut missing = ok.clone();
        missing.as_object_mut().unwrap().remove("modelInput");
        assert!(read_start(&missing)
            .unwrap_err()
            .message
            .contains("'modelInput'"));
        assert!(is(
            &INVOCATION_ARN,
            "arn:aws:bedrock:us-east-2:123456789012:async-invoke/abcdef012345"
        ));
        assert!(!is(
            &INVOCATION_ARN,
            "arn:aws:bedrock:us-east-2:123456789012:async-invoke/ABC"
        ));
    }

    fn job(n: usize, token: Option<&str>) -> Job {
        Job {
            arn: format!("arn:aws:bedrock:us-east-2:123456789012:async-invoke/{n:012}"),
            model_arn: String::new(),
            token: token.map(str::to_owned),
            fingerprint: [0; 32],
            submitted: Duration::ZERO,
            runs_for: Duration::ZERO,
            failure: None,
            output: Value::Null,
        }
    }

    #[test]
    fn tokens_find_their_job_and_the_oldest_jobs_are_forgotten() {
        let jobs = Jobs::default();
        assert!(matches!(jobs.add(job(0, Some("t"))), Added::New(_)));
        assert!(
            matches!(jobs.add(job(1, Some("t"))), Added::Existing(a) if a.ends_with("000000000000"))
        );
        let mut other = job(2, Some("t"));
        other.fingerprint = [1; 32];
        assert!(matches!(jobs.add(other), Added::Conflict));
        for n in 3..MAX_JOBS + 3 {
            jobs.add(job(n, None));
        }
        assert_eq!(jobs.len(), MAX_JOBS);
        assert!(jobs.get(&job(0, None).arn).is_none());
        // The forgotten job's token is free again.
        assert!(matches!(jobs.add(job(99_999, Some("t"))), Added::New(_)));
        jobs.clear();
        assert!(jobs.is_empty());
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(page_offset(&page_token(42)), Some(42));
        assert_eq!(page_offset("nonsense"), None);
        assert_eq!(invocation_id().len(), 12);
    }
}
