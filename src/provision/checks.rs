//! The reads `init` makes before any write, so that bad settings fail fast:
//! the account, the subnets, the image.

use super::common::*;

use crate::config::ImageSource;

pub(crate) async fn account(ctx: &Ctx<'_>) -> R<String> {
    let out = ctx
        .aws
        .sts
        .get_caller_identity()
        .send()
        .await
        .map_err(aws_err("sts:GetCallerIdentity", "the caller"))?;
    Ok(out.account().unwrap_or_default().to_string())
}

pub(crate) async fn subnets(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<()> {
    let ec2 = &ctx.aws.ec2;
    let found = if s.subnets.is_empty() {
        let vpcs = ec2
            .describe_vpcs()
            .filters(
                ec2t::Filter::builder()
                    .name("isDefault")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("ec2:DescribeVpcs", "the default VPC"))?;
        let vpc = vpcs
            .vpcs()
            .first()
            .and_then(|v| v.vpc_id())
            .ok_or_else(|| {
                ProvisionError::Invalid(format!(
                    "no default VPC in {}: pass --subnet (repeatable) or set `subnets`",
                    ctx.region
                ))
            })?
            .to_string();
        ec2.describe_subnets()
            .filters(ec2t::Filter::builder().name("vpc-id").values(&vpc).build())
            .filters(
                ec2t::Filter::builder()
                    .name("default-for-az")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("ec2:DescribeSubnets", "the default subnets"))?
            .subnets()
            .to_vec()
    } else {
        ec2.describe_subnets()
            .filters(
                ec2t::Filter::builder()
                    .name("subnet-id")
                    .set_values(Some(s.subnets.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("ec2:DescribeSubnets", "the given subnets"))?
            .subnets()
            .to_vec()
    };
    for want in &s.subnets {
        if !found.iter().any(|sn| sn.subnet_id() == Some(want.as_str())) {
            return Err(ProvisionError::Invalid(format!(
                "subnet {want} not found in {}: check --subnet and --region",
                ctx.region
            )));
        }
    }
    let mut ids: Vec<String> = found
        .iter()
        .filter_map(|sn| sn.subnet_id().map(String::from))
        .collect();
    ids.sort();
    let vpcs: std::collections::BTreeSet<&str> =
        found.iter().filter_map(|sn| sn.vpc_id()).collect();
    if ids.is_empty() {
        return Err(ProvisionError::Invalid(format!(
            "no subnets to launch into in {}",
            ctx.region
        )));
    }
    if vpcs.len() > 1 {
        return Err(ProvisionError::Invalid(format!(
            "the subnets are in {} VPCs; give subnets of one VPC",
            vpcs.len()
        )));
    }
    f.vpc = vpcs.into_iter().next().unwrap_or_default().to_string();
    f.subnets = ids;
    Ok(())
}

pub(crate) async fn image(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<()> {
    f.image = match &s.image {
        ImageSource::Ami(id) => id.clone(),
        ImageSource::SsmParameter(name) => ctx
            .aws
            .ssm
            .get_parameter()
            .name(name)
            .send()
            .await
            .map_err(|e| {
                if is_not_found(&e) || code(&e) == "ParameterNotFound" {
                    ProvisionError::Invalid(format!(
                        "image parameter {name} not found in {}: pass --image with an AMI id or another parameter",
                        ctx.region
                    ))
                } else {
                    ProvisionError::Aws(AwsError::call("ssm:GetParameter", name, &e))
                }
            })?
            .parameter()
            .and_then(|p| p.value())
            .unwrap_or_default()
            .to_string(),
    };
    let images = ctx
        .aws
        .ec2
        .describe_images()
        .image_ids(&f.image)
        .send()
        .await
        .map_err(|e| {
            if code(&e).starts_with("InvalidAMIID") {
                ProvisionError::Invalid(format!("image {} not found in {}", f.image, ctx.region))
            } else {
                ProvisionError::Aws(AwsError::call("ec2:DescribeImages", &f.image, &e))
            }
        })?;
    let img = images.images().first().ok_or_else(|| {
        ProvisionError::Invalid(format!("image {} not found in {}", f.image, ctx.region))
    })?;
    f.root_device = img.root_device_name().unwrap_or("/dev/sda1").to_string();
    Ok(())
}
