//! The alarms' SNS topic and its email subscription (only with
//! `alarms.email`); removed when the email is.

use super::common::*;

/// The alarm topic.
pub(crate) struct Topic;

impl Resource for Topic {
    fn step(&self) -> StepName {
        StepName::Alarms
    }
    fn label(&self) -> &'static str {
        "alarm topic"
    }
    fn wanted(&self, s: &StackSettings) -> bool {
        s.alarms.enabled && s.alarms.email.is_some()
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx, s, f))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move { Ok(unless_absent(delete(ctx).await?)) })
    }
}

fn name(ctx: &Ctx<'_>) -> String {
    ctx.names.prefixed("-alarms")
}

/// The topic's ARN if it exists, and whether it is ours.
async fn find(ctx: &Ctx<'_>) -> R<Option<Owned<String>>> {
    let name = name(ctx);
    let sns = &ctx.aws.sns;
    let mut pages = sns.list_topics().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(aws_err("sns:ListTopics", &name))?;
        for t in page.topics() {
            let Some(arn) = t.topic_arn() else { continue };
            if arn.rsplit(':').next() != Some(name.as_str()) {
                continue;
            }
            let tags = sns
                .list_tags_for_resource()
                .resource_arn(arn)
                .send()
                .await
                .map_err(aws_err("sns:ListTagsForResource", &name))?;
            let ours = tagged(
                tags.tags().iter().map(|t| (t.key(), t.value())),
                &ctx.names.stack,
            );
            return Ok(Some(Owned {
                it: arn.to_string(),
                ours,
            }));
        }
    }
    Ok(None)
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let name = name(ctx);
    let found = find(ctx).await?;
    let email = s.alarms.email.clone().unwrap_or_default();
    let sns = &ctx.aws.sns;
    let (arn, mut action) = match found {
        Some(Owned { ours: false, .. }) => return Err(not_ours("SNS topic", &name, ctx)),
        Some(Owned { it, .. }) => (Some(it), Action::Keep),
        None if ctx.dry_run => (None, Action::Create),
        None => {
            let out = sns
                .create_topic()
                .name(&name)
                .tags(
                    aws_sdk_sns::types::Tag::builder()
                        .key(STACK_TAG)
                        .value(&ctx.names.stack)
                        .build()
                        .expect("key and value are set"),
                )
                .send()
                .await
                .map_err(aws_err("sns:CreateTopic", &name))?;
            (out.topic_arn().map(String::from), Action::Create)
        }
    };
    f.topic_arn = arn.clone();
    let Some(arn) = arn else {
        return Ok(Item::new("alarm topic", &name, action).detail(format!("email {email}")));
    };
    let subs = sns
        .list_subscriptions_by_topic()
        .topic_arn(&arn)
        .send()
        .await
        .map_err(aws_err("sns:ListSubscriptionsByTopic", &name))?;
    let mut subscribed = false;
    for sub in subs.subscriptions() {
        if sub.protocol() == Some("email") && sub.endpoint() == Some(email.as_str()) {
            subscribed = true;
        } else if sub.protocol() == Some("email") && !ctx.dry_run {
            // Another address than the settings': unsubscribe it.
            if let Some(sa) = sub.subscription_arn().filter(|a| a.starts_with("arn:")) {
                sns.unsubscribe()
                    .subscription_arn(sa)
                    .send()
                    .await
                    .map_err(aws_err("sns:Unsubscribe", &name))?;
                if action == Action::Keep {
                    action = Action::Update;
                }
            }
        }
    }
    if !subscribed {
        if action == Action::Keep {
            action = Action::Update;
        }
        if !ctx.dry_run {
            sns.subscribe()
                .topic_arn(&arn)
                .protocol("email")
                .endpoint(&email)
                .send()
                .await
                .map_err(aws_err("sns:Subscribe", &name))?;
        }
    }
    Ok(Item::new("alarm topic", &name, action)
        .id(&arn)
        .detail(format!(
            "email {email}{}",
            if subscribed {
                ""
            } else {
                " (confirm the subscription)"
            }
        )))
}

async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    let name = name(ctx);
    match find(ctx).await? {
        None => Ok(Item::new("alarm topic", &name, Action::Absent)),
        Some(Owned { it, ours: false }) => {
            Ok(Item::new("alarm topic", &name, Action::Foreign).id(it))
        }
        Some(Owned { it, ours: true }) => {
            if !ctx.dry_run {
                ctx.aws
                    .sns
                    .delete_topic()
                    .topic_arn(&it)
                    .send()
                    .await
                    .map_err(aws_err("sns:DeleteTopic", &name))?;
            }
            Ok(Item::new("alarm topic", &name, Action::Delete).id(it))
        }
    }
}
