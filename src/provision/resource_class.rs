//! The CircleCI resource class the stack's runners serve. Kept if it exists;
//! teardown deletes it unless told to keep it.

use super::common::*;

/// The resource class (CircleCI).
pub(crate) struct ResourceClass;

impl Resource for ResourceClass {
    fn step(&self) -> StepName {
        StepName::ResourceClass
    }
    fn label(&self) -> &'static str {
        "resource class"
    }
    fn per_pool(&self) -> bool {
        true
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx, s, f.pool().class.clone()))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move {
            let Some(rc) = &t.resource_class else {
                return Ok(vec![unknown_class("resource class", "(unknown)")]);
            };
            if t.keep_resource_class {
                return Ok(vec![
                    Item::new("resource class", rc, Action::Keep).detail("--keep-resource-class"),
                ]);
            }
            Ok(vec![delete(ctx, rc).await?])
        })
    }
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, class: Option<cci::ResourceClass>) -> R<Item> {
    if let Some(c) = class {
        return Ok(Item::new("resource class", &s.resource_class, Action::Keep).id(c.id));
    }
    if ctx.dry_run {
        return Ok(Item::new(
            "resource class",
            &s.resource_class,
            Action::Create,
        ));
    }
    let c = cci::create_resource_class(ctx.circleci, &s.resource_class, &s.description).await?;
    Ok(Item::new("resource class", &s.resource_class, Action::Create).id(c.id))
}

async fn delete(ctx: &Ctx<'_>, rc: &str) -> R<Item> {
    let Some(class) = cci::find_resource_class(ctx.circleci, rc).await? else {
        return Ok(Item::new("resource class", rc, Action::Absent));
    };
    if !ctx.dry_run {
        cci::delete_resource_class(ctx.circleci, &class).await?;
    }
    Ok(Item::new("resource class", rc, Action::Delete).id(class.id))
}
