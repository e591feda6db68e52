//! The reads `init` makes before any write, so that bad settings fail fast:
//! the account, the subnets, the image.

use super::common::*;

use crate::config::{DEFAULT_IMAGE, DEFAULT_IMAGE_ARM64, ImageSource};

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

/// The pool's architecture, from its instance types (all must share one).
pub(crate) async fn instance_types(ctx: &Ctx<'_>, s: &StackSettings, p: &mut PoolFound) -> R<()> {
    let out = ctx
        .aws
        .ec2
        .describe_instance_types()
        .set_instance_types(Some(
            s.instance_types
                .iter()
                .map(|t| ec2t::InstanceType::from(t.as_str()))
                .collect(),
        ))
        .send()
        .await
        .map_err(|e| {
            if code(&e).starts_with("InvalidInstanceType") {
                ProvisionError::Invalid(format!(
                    "instance types {}: not all are offered in {} (check instance_types)",
                    s.instance_types.join(", "),
                    ctx.region
                ))
            } else {
                ProvisionError::Aws(AwsError::call(
                    "ec2:DescribeInstanceTypes",
                    s.instance_types.join(","),
                    &e,
                ))
            }
        })?;
    let mut arches: Vec<(String, String)> = Vec::new();
    for want in &s.instance_types {
        let info = out
            .instance_types()
            .iter()
            .find(|i| i.instance_type().map(|t| t.as_str()) == Some(want.as_str()))
            .ok_or_else(|| {
                ProvisionError::Invalid(format!(
                    "instance type {want} is not offered in {} (check instance_types)",
                    ctx.region
                ))
            })?;
        let supported: Vec<&str> = info
            .processor_info()
            .map(|p| {
                p.supported_architectures()
                    .iter()
                    .map(|a| a.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let arch = ["arm64", "x86_64"]
            .into_iter()
            .find(|a| supported.contains(a))
            .or(supported.first().copied())
            .unwrap_or("x86_64");
        arches.push((want.clone(), arch.to_string()));
    }
    let (first, arch) = arches[0].clone();
    if let Some((odd, other)) = arches.iter().find(|(_, a)| *a != arch) {
        return Err(ProvisionError::Invalid(format!(
            "instance type {odd} is {other} but {first} is {arch}: the instance types of a pool must share one architecture (give {odd} its own pool)"
        )));
    }
    p.architecture = arch;
    Ok(())
}

/// The image: the one given, or Ubuntu LTS for the pool's architecture; its
/// architecture must be the pool's.
pub(crate) async fn base_image(ctx: &Ctx<'_>, s: &StackSettings, p: &mut PoolFound) -> R<()> {
    let param = match &s.image {
        ImageSource::Ami(id) => {
            p.image = id.clone();
            None
        }
        ImageSource::SsmParameter(name) => Some(name.as_str()),
        ImageSource::Default if p.architecture == "arm64" => Some(DEFAULT_IMAGE_ARM64),
        ImageSource::Default => Some(DEFAULT_IMAGE),
    };
    if let Some(name) = param {
        p.image = ctx
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
            .to_string();
    }
    let image = p.image.clone();
    let images = ctx
        .aws
        .ec2
        .describe_images()
        .image_ids(&image)
        .send()
        .await
        .map_err(|e| {
            if code(&e).starts_with("InvalidAMIID") {
                ProvisionError::Invalid(format!("image {image} not found in {}", ctx.region))
            } else {
                ProvisionError::Aws(AwsError::call("ec2:DescribeImages", &image, &e))
            }
        })?;
    let img = images.images().first().ok_or_else(|| {
        ProvisionError::Invalid(format!("image {image} not found in {}", ctx.region))
    })?;
    if let Some(a) = img.architecture().map(|a| a.as_str())
        && a != p.architecture
    {
        return Err(ProvisionError::Invalid(format!(
            "image {image} is {a} but instance type {} is {}: give an image for {} (or leave image unset for Ubuntu LTS)",
            s.instance_types[0], p.architecture, p.architecture
        )));
    }
    p.root_device = img.root_device_name().unwrap_or("/dev/sda1").to_string();
    Ok(())
}
